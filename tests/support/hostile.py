"""Malformed and hostile request bodies for the router: every field with hostile values, raw junk, wrong content
types, random mixes with invalid UTF-8; and the check every answer must pass (no 5xx, OpenAI's error shape).
Shared by the unit sweep (stub nodes) and the integration sweep (real vLLM nodes)."""

from __future__ import annotations

import json
import random
from typing import Any, Iterator

import httpx

from tests.support.openai_schema import error_response_problems

JSON = {"content-type": "application/json"}
FIELDS = ["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n",
          "stream", "stream_options", "stop", "seed", "logprobs", "top_logprobs", "presence_penalty",
          "logit_bias", "response_format", "kv_transfer_params", "user"]
VALUES = [None, True, False, 0, -1, -2**31, 2**31, 2**63, 10**30, -1e308, 1e308, 0.5, "", "x", "\x00",
          "\u202e", "\ud800", "x" * 100_000, [], [None], [[]], [-1], [2**40], [True], ["", ""], {}, {"a": 1},
          {"role": "user"}, [{"role": 5}], [{"role": "user", "content": {"x": 1}}]]
RAW = [b"", b"null", b"0", b'"str"', b"[]", b"{", b'{"model": "stub-model",}', b"\xef\xbb\xbf{}",
       b'{"model": "stub-model", "prompt": "x"} trailing', b"\xff" * 64, b"\x00" * 64,
       b'{"model": "stub-model", "prompt": "\xff\xfe"}', b'{"model": "stub-model", "prompt": "\xed\xa0\x80"}',
       b'{"model": "stub-model", "prompt": "x", "max_tokens": 1' + b"0" * 400 + b"}",
       b'{"model": "stub-model", "prompt": "x", "max_tokens": 1e400}',
       b'{"model": "stub-model", "prompt": "x", "temperature": -0.0e-999999}',
       b'{"' + b"k" * 200_000 + b'": 1}', b'{"model": "stub-model", "prompt": "x", "n": -Infinity}',
       b'{"model": "stub-model", "prompt": ' + b"[" * 33 + b"]" * 33 + b"}",
       b'{"model": "stub-model", "messages": [' + b'{"a":' * 2000 + b"1" + b"}" * 2000 + b"]}"]


def hostile_requests(rng: random.Random, model: str) -> Iterator[tuple[str, bytes, dict[str, str]]]:
    """(path, raw body, headers): every field with every hostile value, raw junk, then random mixes."""
    for path in ("/v1/completions", "/v1/chat/completions"):
        base: dict[str, Any] = {"model": model, "max_tokens": 3}
        base.update({"prompt": "hello there"} if path == "/v1/completions" else {
            "messages": [{"role": "user", "content": "hi"}]})
        for field in FIELDS:
            for value in rng.sample(VALUES, 8):
                yield path, json.dumps({**base, field: value}).encode(), JSON
        for raw in RAW:
            yield path, raw.replace(b'"stub-model"', json.dumps(model).encode()), JSON
        for content_type in ("text/plain", "application/xml", "image/png", "application/x-www-form-urlencoded"):
            yield path, json.dumps(base).encode(), {"content-type": content_type}
    for _ in range(120):
        body = {rng.choice(FIELDS): rng.choice(VALUES) for _ in range(rng.randint(1, 5))}
        raw = json.dumps(body).encode()
        if rng.random() < 0.3:  # flip a byte into invalid UTF-8
            i = rng.randrange(len(raw))
            raw = raw[:i] + bytes([rng.choice([0x80, 0xC0, 0xFF, 0xED])]) + raw[i + 1:]
        yield rng.choice(["/v1/completions", "/v1/chat/completions"]), raw, JSON


def check_answer(resp: httpx.Response, what: str) -> None:
    """No 5xx; an error body is OpenAI's published ErrorResponse (code a string or null) with a message."""
    assert resp.status_code < 500, f"{what}: {resp.status_code} {resp.text[:300]}"
    if resp.status_code >= 400:
        check_error_body(resp.json(), what)


def check_error_body(body: Any, what: str) -> None:
    assert not error_response_problems(body), (what, error_response_problems(body), body)
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"], what
    assert err["code"] is None or isinstance(err["code"], str), what


