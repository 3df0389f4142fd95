"""The prefill node's first token goes to the client, the decode node continues from prompt + first token:
against stub servers that are a tiny autoregressive model (tests/support/stub_vllm.py), so the continued
answer must equal colocated serving's exactly; and the cases served otherwise."""

from __future__ import annotations

import json
from contextlib import ExitStack

import httpx
import pytest

from router import continuation, splice
from router.chunk import Chunk
from tests.support.stub_cluster import stub_cluster, wait_for
from tests.support.stub_vllm import tokenize

CHAT = {"model": "stub-model", "messages": [{"role": "user", "content": "tell me more"}], "max_tokens": 6,
        "temperature": 0}
COMPLETION = {"model": "stub-model", "prompt": "once upon a time", "max_tokens": 6, "temperature": 0}


@pytest.fixture(scope="module")
def routers():
    with ExitStack() as stack:
        yield stack.enter_context(stub_cluster()), stack.enter_context(stub_cluster(mode="colocated"))


def path(body: dict) -> str:
    return "/v1/chat/completions" if "messages" in body else "/v1/completions"


def streamed(url: str, body: dict) -> tuple[list[dict], list[str]]:
    with httpx.stream("POST", url + path(body), json={**body, "stream": True}, timeout=10) as resp:
        assert resp.status_code == 200, resp.read()
        lines = [line for line in resp.iter_lines() if line.startswith("data:")]
    assert lines.count("data: [DONE]") == 1 and lines[-1] == "data: [DONE]"
    return [json.loads(line[5:]) for line in lines[:-1]], lines


def text_of(chunks: list[dict]) -> str:
    out = ""
    for chunk in chunks:
        for choice in chunk.get("choices") or []:
            out += choice.get("text") or (choice.get("delta") or {}).get("content") or ""
    return out


@pytest.mark.parametrize("body", [COMPLETION, CHAT, {**CHAT, "return_token_ids": True},
                                  {**COMPLETION, "return_token_ids": True, "min_tokens": 3},
                                  {**CHAT, "max_tokens": None, "max_completion_tokens": 5},
                                  {key: v for key, v in COMPLETION.items() if key != "max_tokens"}])
def test_unary_answers_equal_colocated_and_the_decode_node_continues(routers, body):
    disagg, colocated = routers
    calls_before = len(disagg.decodes[0].calls)
    got = httpx.post(disagg.url + path(body), json=body, timeout=10)
    want = httpx.post(colocated.url + path(body), json=body, timeout=10)
    assert got.status_code == want.status_code == 200, got.text
    for key in ("choices", "usage", "prompt_token_ids"):
        assert got.json().get(key) == want.json().get(key), key
    decode_call = disagg.decodes[0].calls[calls_before]
    endpoint = "chat" if "messages" in body else "completions"
    budget = continuation.max_tokens_of(body, endpoint)
    assert continuation.max_tokens_of(decode_call, endpoint) == budget - 1  # one token less to make
    if "messages" in body:
        assert len(decode_call["kv_transfer_params"]["prompt_token_ids"]) == len(body["messages"][0]["content"].split()) + 1
    else:
        assert decode_call["prompt"][:-1] == tokenize(body["prompt"])  # the prompt's ids, not its text again
    if body.get("min_tokens"):
        assert decode_call["min_tokens"] == body["min_tokens"] - 1


@pytest.mark.parametrize("body", [COMPLETION, CHAT, {**CHAT, "return_token_ids": True},
                                  {**COMPLETION, "return_token_ids": True, "stream_options": {"include_usage": True}}])
def test_streams_equal_colocated_and_the_first_chunk_is_the_prefill_nodes_token(routers, body):
    disagg, colocated = routers
    got, _ = streamed(disagg.url, body)
    want, _ = streamed(colocated.url, body)
    assert text_of(got) == text_of(want)
    assert [c.get("usage") for c in got if c.get("usage")] == [c.get("usage") for c in want if c.get("usage")]
    roles = [c for c in got if c["choices"] and "role" in c["choices"][0].get("delta", {})]
    assert len(roles) == (1 if "messages" in body else 0)  # the client sees one role chunk, not two
    ids = lambda chunks: [t for c in chunks for ch in c["choices"] for t in ch.get("token_ids") or []]  # noqa: E731
    assert ids(got) == ids(want)
    prompt_ids = lambda chunks: [c.get("prompt_token_ids") or c["choices"][0].get("prompt_token_ids")  # noqa: E731
                                 for c in chunks if c.get("prompt_token_ids") or (c["choices"] and c["choices"][0].get("prompt_token_ids"))]
    assert prompt_ids(got) == prompt_ids(want)
    assert len({c["id"] for c in got}) == 1


def test_a_first_token_that_ends_the_answer_never_reaches_the_decode_node_and_its_kv_is_released(routers):
    disagg, colocated = routers
    body = {**COMPLETION, "prompt": "STOPFIRST please"}
    decode = disagg.decodes[0]
    calls, released = len(decode.calls), len(decode.released)
    got = httpx.post(disagg.url + path(body), json=body, timeout=10).json()
    want = httpx.post(colocated.url + path(body), json=body, timeout=10).json()
    assert got["choices"] == want["choices"] and got["usage"] == want["usage"]
    assert got["choices"][0]["finish_reason"] == "stop" and "kv_transfer_params" not in got
    chunks, _ = streamed(disagg.url, {**body, "stream_options": {"include_usage": True}})
    assert chunks[0]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["usage"] == want["usage"]
    assert len(decode.calls) == calls  # no generation request reached it
    assert wait_for(lambda: len(decode.released) == released + 2)  # a release call per request: nothing leased
    assert decode.released[-1]["remote_request_id"] == "stub-req"


def test_one_token_requests_are_served_by_a_prefill_node_alone_and_keep_no_kv(routers):
    disagg, _ = routers
    prefill, decode = disagg.prefills[0], disagg.decodes[0]
    calls, released = len(decode.calls), len(decode.released)
    got = httpx.post(disagg.url + path(CHAT), json={**CHAT, "max_tokens": 1}, timeout=10)
    assert got.status_code == 200 and got.json()["usage"]["completion_tokens"] == 1
    assert "kv_transfer_params" not in prefill.calls[-1]  # a plain request: vLLM keeps nothing for a pull
    assert len(decode.calls) == calls and len(decode.released) == released


def test_a_chat_request_without_a_token_budget_is_decoded_the_plain_way():
    assert continuation.reason_not_to_continue({**CHAT, "max_tokens": None}, "chat") == "no token budget"
    assert continuation.reason_not_to_continue({"model": "m", "prompt": "p"}, "completions") is None  # 16


@pytest.mark.parametrize("extra,why", [({"stop": ["x"]}, "stop strings"), ({"temperature": 0.8, "seed": 3}, "seeded"),
                                       ({"presence_penalty": 0.5}, "presence"), ({"echo": True}, "echo"),
                                       ({"response_format": {"type": "json_object"}}, "response_format")])
def test_what_continuation_cannot_carry_exactly_is_decoded_the_plain_way(routers, extra, why):
    disagg, colocated = routers
    body = {**COMPLETION, **extra}
    assert why in continuation.reason_not_to_continue(body, "completions")
    got = httpx.post(disagg.url + path(body), json=body, timeout=10)
    want = httpx.post(colocated.url + path(body), json=body, timeout=10)
    assert got.status_code == want.status_code
    if got.status_code == 200:
        assert got.json()["choices"][0]["text"] == want.json()["choices"][0]["text"]
        assert disagg.decodes[0].calls[-1]["prompt"] == body["prompt"]  # its own prompt, recomputed there


def test_completion_logprobs_and_offsets_are_spliced_as_one_answer():
    first = continuation.FirstToken(
        answer={"id": "x", "choices": [{"text": " a", "logprobs": {"text_offset": [0], "token_logprobs": [-0.1],
                                                                    "tokens": [" a"], "top_logprobs": [{" a": -0.1}]},
                                         "finish_reason": "length", "token_ids": [7], "prompt_token_ids": [1, 2]}],
                "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}},
        token_id=7, text=" a", prompt_token_ids=[1, 2], finish_reason="length")
    rest = {"id": "y", "choices": [{"text": " bc", "logprobs": {"text_offset": [0, 2], "token_logprobs": [-1, -2],
                                                                  "tokens": [" b", "c"], "top_logprobs": [{}, {}]},
                                    "finish_reason": "length", "token_ids": [8, 9], "prompt_token_ids": [1, 2, 7]}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
    whole = splice.unary(first, rest, "completions", {"return_token_ids": True})
    choice = whole["choices"][0]
    assert choice["text"] == " a bc" and choice["token_ids"] == [7, 8, 9] and choice["prompt_token_ids"] == [1, 2]
    assert choice["logprobs"]["text_offset"] == [0, 2, 4] and choice["logprobs"]["tokens"] == [" a", " b", "c"]
    assert whole["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    splicer = splice.StreamSplicer(first, "completions")
    chunk = splicer.chunk(Chunk(b'{"id":"y","choices":[{"text":" b","logprobs":{"text_offset":[0]}}]}'))
    assert chunk.data["id"] == "x" and chunk.data["choices"][0]["logprobs"]["text_offset"] == [2]
    plain = Chunk(b'{"id":"x","choices":[{"text":" c"}]}')
    assert splicer.chunk(plain) is plain and plain._data is None  # nothing to change: passed on unparsed


def test_a_first_token_that_cannot_be_split_off_is_not_continued():
    answer = {"choices": [{"text": "\ufffd", "token_ids": [5], "prompt_token_ids": [1], "finish_reason": "length"}]}
    assert not continuation.first_token(answer, "completions").usable  # a partial UTF-8 character
    answer["choices"][0]["text"] = ""
    assert not continuation.first_token(answer, "completions").usable
    answer["choices"][0]["finish_reason"] = "stop"
    assert continuation.first_token(answer, "completions").usable  # it is the whole answer
