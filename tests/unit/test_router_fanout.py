"""Request shapes vLLM's P/D protocol cannot carry as is (several prompts, n > 1) are split into single P/D
requests and merged back: against stub vLLM servers that answer batches the way vLLM does (one
kv_transfer_params per batch), the disaggregated router answers what the colocated router answers."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from tests.support.stub_cluster import stub_cluster, wait_for

PROMPTS = ["hello there", "the quick brown fox", "one two", "a b c d e"]
CHAT = {"model": "stub-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def _completion(**extra: Any) -> dict[str, Any]:
    return {"model": "stub-model", "prompt": PROMPTS[:3], "max_tokens": 4, "temperature": 0.7, "seed": 11, **extra}


@pytest.fixture(scope="module")
def routers():
    """(disagg cluster, colocated cluster): the same stubs' behaviour behind both router modes."""
    with ExitStack() as stack:
        yield stack.enter_context(stub_cluster()), stack.enter_context(stub_cluster(mode="colocated"))


def _path(body: dict[str, Any]) -> str:
    return "/v1/chat/completions" if "messages" in body else "/v1/completions"


def _stream(url: str, body: dict[str, Any]) -> tuple[list[dict], list[str]]:
    """(chunks, raw data lines) of a streamed answer."""
    with httpx.stream("POST", url + _path(body), json=body, timeout=10) as resp:
        assert resp.status_code == 200, resp.read()
        lines = [line for line in resp.iter_lines() if line.startswith("data:")]
    return [json.loads(line[5:]) for line in lines if line != "data: [DONE]"], lines


def _texts(chunks: list[dict]) -> dict[int, str]:
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            piece = choice.get("text") if "text" in choice else choice["delta"].get("content")
            texts[choice["index"]] = texts.get(choice["index"], "") + (piece or "")
    return texts


@pytest.mark.parametrize("extra", [
    {}, {"n": 2}, {"n": 3, "prompt": PROMPTS}, {"prompt": [[1, 2], [3, 4, 5]], "n": 2}, {"prompt": PROMPTS[:1]},
    {"prompt": [5, 6, 7], "n": 2},  # one list of token ids is ONE prompt
])
def test_unary_split_equals_colocated(routers, extra):
    disagg, colocated = routers
    body = _completion(**extra)
    got = httpx.post(disagg.url + "/v1/completions", json=body, timeout=10).json()
    want = httpx.post(colocated.url + "/v1/completions", json=body, timeout=10).json()
    assert [(c["index"], c["text"]) for c in got["choices"]] == [(c["index"], c["text"]) for c in want["choices"]]
    assert got["usage"] == want["usage"] and got["id"]


def test_each_part_has_its_own_prefill_and_kv_params(routers):
    disagg, _ = routers
    prefill, decode = disagg.prefills[0], disagg.decodes[0]
    calls_before, pulled_before = len(prefill.calls), len(decode.pulled)
    resp = httpx.post(disagg.url + "/v1/completions", json=_completion(n=2, min_tokens=3), timeout=10)
    assert resp.status_code == 200 and len(resp.json()["choices"]) == 6
    prefills = prefill.calls[calls_before:]
    assert len(prefills) == 6 and all(isinstance(c["prompt"], str) for c in prefills)
    assert all("n" not in c and "min_tokens" not in c and c["max_tokens"] == 1 for c in prefills)
    decodes = decode.calls[-6:]
    assert sorted(c["seed"] for c in decodes) == [11, 11, 11, 12, 12, 12]  # vLLM seeds child j with seed + j
    assert all(c["min_tokens"] == 3 and c["max_tokens"] == 4 for c in decodes)  # intact on the decode leg
    assert len(decode.pulled) - pulled_before == 6


@pytest.mark.parametrize("body", [
    _completion(n=2, stream_options={"include_usage": True}),
    _completion(prompt=PROMPTS, stream_options={"include_usage": True}),
    _completion(n=2),
    {**CHAT, "n": 3, "temperature": 1.0, "seed": 5, "stream_options": {"include_usage": True}},
])
def test_streamed_split_equals_colocated_with_one_usage_chunk_and_one_done(routers, body):
    disagg, colocated = routers
    got, got_lines = _stream(disagg.url, {**body, "stream": True})
    want, _ = _stream(colocated.url, {**body, "stream": True})
    assert _texts(got) == _texts(want)
    assert got_lines[-1] == "data: [DONE]" and got_lines.count("data: [DONE]") == 1
    usage = [c for c in got if c.get("usage")]
    if body.get("stream_options"):
        assert len(usage) == 1 and got[-1] is usage[0] and usage[0]["choices"] == []
        assert usage[0]["usage"] == [c for c in want if c.get("usage")][0]["usage"]
    else:
        assert not usage
    assert len({c["id"] for c in got}) == 1


@pytest.mark.parametrize("body", [
    {**CHAT, "logprobs": True, "top_logprobs": 2},
    {**CHAT, "n": None, "stream": None, "stop": None, "seed": None, "logprobs": None, "temperature": None},
    {**CHAT, "min_tokens": 2, "max_tokens": None, "max_completion_tokens": 3},
    _completion(prompt="hi", n=None, stream=None, echo=None, logprobs=None, suffix=None),
])
def test_openai_shapes_that_used_to_be_refused_are_served(routers, body):
    disagg, colocated = routers
    got = httpx.post(disagg.url + _path(body), json=body, timeout=10)
    assert got.status_code == 200, got.text
    want = httpx.post(colocated.url + _path(body), json=body, timeout=10)
    assert got.json()["choices"] == want.json()["choices"]


def test_greedy_n_is_refused_as_vllm_refuses_it(routers):
    disagg, colocated = routers
    body = _completion(n=2, temperature=0)
    for url in (disagg.url, colocated.url):
        resp = httpx.post(url + "/v1/completions", json=body, timeout=10)
        assert resp.status_code == 400 and "greedy" in resp.json()["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("held", ["HOLDDECODE", "HOLDPREFILL"])
def test_one_failing_part_fails_the_whole_request_and_cancels_the_others(held, stream):
    with stub_cluster() as c, ThreadPoolExecutor(1) as pool:
        body = _completion(prompt=[f"{held} please", "FAIL500 now"], stream=stream)
        held_node = c.decodes[0] if held == "HOLDDECODE" else c.prefills[0]
        held_node.hold = True  # the failing part fails only once the held part is on its node, however slow the box
        answer = pool.submit(httpx.post, c.url + "/v1/completions", json=body, timeout=10)
        assert wait_for(lambda: held_node.active == 2), "both parts did not reach the held node"
        held_node.hold = False
        resp = answer.result()
        assert resp.status_code == 502, resp.text
        assert resp.json()["error"]["code"] in ("decode_http_500", "prefill_http_500")
        assert wait_for(lambda: held_node.aborted == 1), "the other part was not cancelled"
        if held == "HOLDDECODE":  # cancelled after its prefill: a release call frees its blocks
            assert wait_for(lambda: len(c.decodes[0].released) == 1)
        assert wait_for(lambda: c.prefills[0].active == c.decodes[0].active == 0)
        assert c.metric("disagg_router_requests_in_flight") == 0


def test_a_part_failing_mid_stream_ends_the_stream_with_an_error_and_cancels_the_others():
    with stub_cluster() as c:
        decode = c.decodes[0]
        decode.token_delay_s = 0.05
        body = _completion(prompt=["a long answer", "CUTSTREAM here"], max_tokens=60, stream=True)
        with httpx.stream("POST", c.url + "/v1/completions", json=body, timeout=10) as resp:
            assert resp.status_code == 200
            raw = resp.read().decode()
        assert "event: error" in raw and raw.rstrip().endswith("data: [DONE]") and raw.count("data: [DONE]") == 1
        error = json.loads([line for line in raw.splitlines() if '"error"' in line][-1][5:])["error"]
        assert error["code"] == "decode_stream_cut" and error["type"] == "server_error"
        assert wait_for(lambda: decode.aborted == 1 and decode.active == 0), (decode.aborted, decode.active)
        assert c.metric("disagg_router_requests_in_flight") == 0


def test_a_part_refused_by_the_decode_node_releases_the_prefilled_kv_of_every_part():
    with stub_cluster() as c:
        body = _completion(prompt=["one", "two"], min_tokens=8, max_tokens=4)  # vLLM: min_tokens > max_tokens
        resp = httpx.post(c.url + "/v1/completions", json=body, timeout=10)
        assert resp.status_code == 400 and "min_tokens" in resp.json()["error"]["message"]
        assert wait_for(lambda: len(c.decodes[0].released) == 2), c.decodes[0].released
        assert all(params["do_remote_prefill"] for params in c.decodes[0].released)
        assert wait_for(lambda: c.decodes[0].active == 0) and c.metric("disagg_router_requests_in_flight") == 0


def test_a_part_whose_prefill_answers_just_after_its_cancellation_still_has_its_kv_released():
    with stub_cluster() as c:
        body = _completion(prompt=["SLOWPREFILL please", "FAIL500 now"])
        assert httpx.post(c.url + "/v1/completions", json=body, timeout=10).status_code == 502
        assert wait_for(lambda: len(c.decodes[0].released) == 1), "the late prefill's KV was not released"
        assert not [call for call in c.decodes[0].calls if call.get("kv_transfer_params")]  # nothing decoded


def test_a_stream_closed_before_the_decode_nodes_first_chunk_releases_the_prefilled_kv():
    """vLLM's API server sends a stream's headers before its engine takes the request: a stream the router
    closes then (the client left) was never seen by the engine, so nobody else frees the prefill's blocks."""
    with stub_cluster() as c:
        decode = c.decodes[0]
        decode.first_chunk_delay_s = 5.0
        body = {**CHAT, "max_tokens": 8, "temperature": 0, "stream": True}
        with httpx.stream("POST", c.url + "/v1/chat/completions", json=body, timeout=10) as resp:
            assert resp.status_code == 200
            next(resp.iter_lines())  # the prefill node's first token reaches the client; then it leaves
        assert wait_for(lambda: decode.aborted == 1), "the decode stream was not closed"
        assert wait_for(lambda: len(decode.released) == 1), "the prefilled KV was not released"
        assert decode.released[0]["do_remote_prefill"]
