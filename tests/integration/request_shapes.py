"""The corpus of request shapes of the differential test (test_request_shapes.py), and how one answer is read.

A shape is one request body for one endpoint; the test sends it unary and streamed (unless the shape says
otherwise) to the disaggregated router and to the colocated baseline router. Prompts are short and outputs
at most 8 tokens, so that the corpus runs in a few minutes on a 2-core CPU. Sampled shapes (temperature > 0)
always carry a `seed`, so that their answers are comparable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx

PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
LOGPROB_TOLERANCE = 0.02


@dataclass(frozen=True)
class Shape:
    name: str
    endpoint: str
    body: dict[str, Any]
    modes: tuple[str, ...] = ("unary", "stream")


PROMPTS = ["The capital of France is", "One, two, three,", "The sky is", "Water boils at"]
SEEDED = {"temperature": 0.9, "seed": 1234}


def corpus(model: str, token_ids: Any, long_prompt: str) -> list[Shape]:
    """Every shape; `token_ids(text)` tokenizes, `long_prompt` is over the model's context."""
    c = {"model": model, "prompt": PROMPTS[0], "max_tokens": 6, "temperature": 0}
    h = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 6, "temperature": 0}
    return ([Shape(f"c-{name}", "completions", {**c, **extra})
             for name, extra in {**_completions(token_ids), **_bad_completions(long_prompt)}.items()]
            + [Shape(f"h-{name}", "chat", {**h, **extra})
               for name, extra in _chats(h["messages"], long_prompt).items()])


def _completions(token_ids: Any) -> dict[str, dict[str, Any]]:
    p, seeded = PROMPTS, SEEDED
    return {
        "plain": {}, "list-1": {"prompt": p[:1]}, "list-2": {"prompt": p[:2]}, "list-4": {"prompt": p},
        "ids-1": {"prompt": token_ids(p[0])}, "ids-list-2": {"prompt": [token_ids(x) for x in p[:2]]},
        "ids-list-3": {"prompt": [token_ids(x) for x in p[1:]], "max_tokens": 4},
        "n2-seed": {"n": 2, **seeded}, "n3-seed": {"n": 3, "temperature": 0.8, "seed": 7},
        "list2-n2-seed": {"prompt": p[:2], "n": 2, **seeded},
        "list3-n3-seed": {"prompt": p[1:], "n": 3, "max_tokens": 4, **seeded},
        "n2-greedy": {"n": 2}, "ids2-n2-seed": {"prompt": [token_ids(x) for x in p[2:]], "n": 2, **seeded},
        "min-tokens": {"min_tokens": 4}, "min-eq-max": {"min_tokens": 6, "ignore_eos": True},
        "list2-min-tokens": {"prompt": p[:2], "min_tokens": 3},
        "logprobs-2": {"logprobs": 2}, "logprobs-0": {"logprobs": 0},
        "list2-logprobs": {"prompt": p[:2], "logprobs": 1},
        "echo": {"echo": True}, "list2-echo": {"prompt": p[:2], "echo": True},
        "echo-logprobs": {"echo": True, "logprobs": 1}, "prompt-logprobs": {"prompt_logprobs": 1},
        "nulls": {"n": None, "stream_options": None, "stop": None, "seed": None, "logprobs": None, "echo": None,
                  "suffix": None, "best_of": None, "frequency_penalty": None, "presence_penalty": None,
                  "logit_bias": None, "top_p": None},
        "stop-list": {"stop": [","], "prompt": p[1]}, "stop-str": {"stop": " Paris"},
        "list2-stop": {"prompt": p[:2], "stop": ["."]},
        "structured-choice": {"structured_outputs": {"choice": ["yes", "no"]}},
        "json-schema": {"response_format": {"type": "json_schema", "json_schema": {
            "name": "c", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}}},
        "unknown-field": {"frobnicate": 1}, "top-k-seed": {"top_k": 5, "temperature": 0.7, "seed": 3},
        "return-token-ids": {"return_token_ids": True}, "repetition": {"repetition_penalty": 1.3},
        "seed-int64": {"temperature": 0.5, "seed": 2**62}, "max-tokens-null": {"max_tokens": None, "prompt": p[3]},
        "include-usage": {"stream_options": {"include_usage": True}},
        "list3-include-usage": {"prompt": p[:3], "n": 2, "stream_options": {"include_usage": True}, **seeded},
        "continuous-usage": {"prompt": p[:2], "stream_options": {"include_usage": True,
                                                                  "continuous_usage_stats": True}},
        "echo-max0": {"echo": True, "max_tokens": 0},
        "beam-search": {"use_beam_search": True, "n": 2, "max_tokens": 4},
    }


def _bad_completions(long_prompt: str) -> dict[str, dict[str, Any]]:
    """Refused, by the router's schema or by vLLM: the same 4xx from both routers."""
    p = PROMPTS
    return {
        "bad-min-gt-max": {"min_tokens": 8, "max_tokens": 4}, "bad-unknown-model": {"model": "no-such-model"},
        "bad-temperature": {"temperature": "hot"}, "bad-n0": {"n": 0}, "bad-max0": {"max_tokens": 0},
        "bad-long": {"prompt": long_prompt}, "bad-list-long": {"prompt": [p[0], long_prompt]},
        "bad-max-huge": {"max_tokens": 100_000}, "bad-empty-list": {"prompt": []},
        "bad-seed-2e63": {"seed": 2**63}, "bad-n-huge": {"n": 1000},
    }


def _chats(messages: list[dict[str, Any]], long_prompt: str) -> dict[str, dict[str, Any]]:
    seeded = SEEDED
    return {
        "plain": {}, "system": {"messages": [{"role": "system", "content": "Be brief."}, *messages]},
        "developer": {"messages": [{"role": "developer", "content": "Be brief."}, *messages]},
        "parts": {"messages": [{"role": "user", "content": [{"type": "text", "text": "Say hi."}]}]},
        "n2-seed": {"n": 2, **seeded}, "n3-seed": {"n": 3, "temperature": 0.8, "seed": 9}, "n2-greedy": {"n": 2},
        "logprobs-top2": {"logprobs": True, "top_logprobs": 2}, "logprobs-false": {"logprobs": False},
        "logprobs-true": {"logprobs": True}, "n2-logprobs": {"n": 2, "logprobs": True, "top_logprobs": 1, **seeded},
        "min-tokens": {"min_tokens": 5}, "max-completion": {"max_tokens": None, "max_completion_tokens": 5},
        "max-completion-min": {"max_tokens": None, "max_completion_tokens": 5, "min_tokens": 3},
        "nulls": {"n": None, "stream_options": None, "stop": None, "seed": None, "logprobs": None,
                  "presence_penalty": None, "frequency_penalty": None, "logit_bias": None,
                  "top_p": None, "max_completion_tokens": None, "store": None},
        "stop": {"stop": ["!"]}, "json-object": {"response_format": {"type": "json_object"}},
        "json-schema": {"response_format": {"type": "json_schema", "json_schema": {
            "name": "h", "schema": {"type": "object", "properties": {"b": {"type": "string"}}}}}},
        "structured-regex": {"structured_outputs": {"regex": "[a-z]+"}}, "unknown-field": {"frobnicate": [1]},
        "include-usage": {"stream_options": {"include_usage": True}},
        "n3-include-usage": {"n": 3, "stream_options": {"include_usage": True}, **seeded},
        "seed-int64": {"temperature": 0.5, "seed": -(2**62)}, "return-token-ids": {"return_token_ids": True},
        "continue-final": {"messages": [*messages, {"role": "assistant", "content": "Hi"}],
                           "add_generation_prompt": False, "continue_final_message": True},
        "bad-role": {"messages": [{"role": "wizard", "content": "hi"}]}, "bad-empty": {"messages": []},
        "bad-unknown-model": {"model": "no-such-model"}, "bad-top-logprobs-only": {"top_logprobs": 2},
        "bad-min-gt-max": {"min_tokens": 9}, "bad-long": {"messages": [{"role": "user", "content": long_prompt}]},
        "bad-content-int": {"messages": [{"role": "user", "content": 5}]},
    }


@dataclass
class Answer:
    """What one router answered, reduced to what must be equal; `framing` lists SSE framing faults."""

    status: int
    choices: dict[int, dict[str, Any]] = field(default_factory=dict)
    usage: dict[str, Any] | None = None
    usage_chunks: int = 0
    error: dict[str, Any] | None = None
    framing: list[str] = field(default_factory=list)


def send(url: str, endpoint: str, body: dict[str, Any]) -> Answer:
    if body.get("stream"):
        return _streamed(url + PATHS[endpoint], endpoint, body)
    resp = httpx.post(url + PATHS[endpoint], json=body, timeout=300)
    data = resp.json()
    if resp.status_code != 200:
        return Answer(resp.status_code, error=data)
    answer = Answer(200, usage=_usage(data.get("usage")))
    for choice in data["choices"]:
        text = choice["text"] if endpoint == "completions" else choice["message"].get("content")
        answer.choices[choice["index"]] = {"text": text, "finish_reason": choice.get("finish_reason"),
                                           "logprobs": _logprob_tokens(choice.get("logprobs")),
                                           "token_ids": choice.get("token_ids"),
                                           "prompt_logprobs": choice.get("prompt_logprobs") is not None}
    return answer


def _streamed(url: str, endpoint: str, body: dict[str, Any]) -> Answer:
    with httpx.stream("POST", url, json=body, timeout=300) as resp:
        if resp.status_code != 200:
            resp.read()
            return Answer(resp.status_code, error=resp.json())
        answer, done, event = Answer(200), 0, None
        for line in resp.iter_lines():
            if not line:
                event = None
                continue
            if line.startswith("event:"):
                event = line[6:].strip()
                continue
            if done:
                answer.framing.append(f"data after [DONE]: {line[:80]}")
            if line.strip() == "data: [DONE]":
                done += 1
                continue
            if not line.startswith("data: "):
                answer.framing.append(f"not an SSE data line: {line[:80]}")
                continue
            chunk = json.loads(line[6:])
            if event == "error" or "error" in chunk:
                answer.error = chunk
                continue
            _add_chunk(answer, endpoint, chunk)
        if done != 1:
            answer.framing.append(f"{done} [DONE] lines")
    return answer


def _add_chunk(answer: Answer, endpoint: str, chunk: dict[str, Any]) -> None:
    if chunk.get("usage"):
        if not chunk["choices"]:
            answer.usage_chunks += 1
            answer.usage = _usage(chunk["usage"])
    for choice in chunk["choices"]:
        got = answer.choices.setdefault(choice["index"], {"text": "", "finish_reason": None, "logprobs": [],
                                                          "token_ids": None, "prompt_logprobs": False})
        piece = choice.get("text") if endpoint == "completions" else (choice.get("delta") or {}).get("content")
        got["text"] += piece or ""
        got["finish_reason"] = choice.get("finish_reason") or got["finish_reason"]
        got["logprobs"] = (got["logprobs"] or []) + (_logprob_tokens(choice.get("logprobs")) or [])
        if choice.get("token_ids") is not None:
            got["token_ids"] = (got["token_ids"] or []) + choice["token_ids"]


def _usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if usage is None else {k: usage.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def _logprob_tokens(logprobs: dict[str, Any] | None) -> list[tuple[str, float, int]] | None:
    """(token, logprob, number of alternatives) per position, completions' or chat's layout."""
    if not logprobs:
        return None
    if "content" in logprobs:
        return [(t["token"], t["logprob"], len(t.get("top_logprobs") or [])) for t in logprobs["content"] or []]
    return [(t, lp, len(top or {})) for t, lp, top in zip(logprobs["tokens"], logprobs["token_logprobs"],
                                                          logprobs["top_logprobs"] or [None] * len(logprobs["tokens"]))]


def differences(disagg: Answer, colocated: Answer) -> list[str]:
    """Why the disaggregated answer is not the colocated one (empty: equal)."""
    if disagg.status != colocated.status:
        return [f"status {disagg.status} != {colocated.status}: "
                f"{str(disagg.error)[:200]} / {str(colocated.error)[:200]}"]
    diffs = [f"framing: {f}" for f in disagg.framing]
    if (disagg.error is None) != (colocated.error is None):
        diffs.append(f"error {disagg.error} != {colocated.error}")
    if disagg.usage != colocated.usage or disagg.usage_chunks != colocated.usage_chunks:
        diffs.append(f"usage {disagg.usage} x{disagg.usage_chunks} != {colocated.usage} x{colocated.usage_chunks}")
    if sorted(disagg.choices) != sorted(colocated.choices):
        diffs.append(f"choice indexes {sorted(disagg.choices)} != {sorted(colocated.choices)}")
    for index in sorted(set(disagg.choices) & set(colocated.choices)):
        mine, theirs = disagg.choices[index], colocated.choices[index]
        for key in ("text", "finish_reason", "token_ids", "prompt_logprobs"):
            if mine[key] != theirs[key]:
                diffs.append(f"choice {index} {key}: {str(mine[key])[:120]!r} != {str(theirs[key])[:120]!r}")
        if not _same_logprobs(mine["logprobs"], theirs["logprobs"]):
            diffs.append(f"choice {index} logprobs: {str(mine['logprobs'])[:160]} != {str(theirs['logprobs'])[:160]}")
    return diffs


def _same_logprobs(a: list | None, b: list | None) -> bool:
    if not a or not b:
        return not a and not b
    return len(a) == len(b) and all(
        x[0] == y[0] and x[2] == y[2] and (x[1] is None) == (y[1] is None)
        and (x[1] is None or abs(x[1] - y[1]) <= LOGPROB_TOLERANCE) for x, y in zip(a, b))
