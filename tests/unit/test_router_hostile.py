"""A sweep of malformed and hostile requests: never a 5xx, every error in OpenAI's shape, still serving."""

from __future__ import annotations

import json
import random
from typing import Iterator

import httpx

from tests.support.stub_cluster import completion, stub_cluster

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


def _bodies(rng: random.Random) -> Iterator[tuple[str, bytes, dict[str, str]]]:
    """(path, raw body, headers): every field with every hostile value, raw junk, then random mixes."""
    for path in ("/v1/completions", "/v1/chat/completions"):
        base = completion() if path == "/v1/completions" else {
            "model": "stub-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        for field in FIELDS:
            for value in rng.sample(VALUES, 8):
                yield path, json.dumps({**base, field: value}).encode(), JSON
        for raw in RAW:
            yield path, raw, JSON
        for content_type in ("text/plain", "application/xml", "image/png", "application/x-www-form-urlencoded"):
            yield path, json.dumps(base).encode(), {"content-type": content_type}
    for _ in range(120):
        body = {rng.choice(FIELDS): rng.choice(VALUES) for _ in range(rng.randint(1, 5))}
        raw = json.dumps(body).encode()
        if rng.random() < 0.3:  # flip a byte into invalid UTF-8
            i = rng.randrange(len(raw))
            raw = raw[:i] + bytes([rng.choice([0x80, 0xC0, 0xFF, 0xED])]) + raw[i + 1:]
        yield rng.choice(["/v1/completions", "/v1/chat/completions"]), raw, JSON


def _check(resp: httpx.Response, what: str) -> None:
    assert resp.status_code < 500, f"{what}: {resp.status_code} {resp.text[:300]}"
    if resp.status_code >= 400:
        err = resp.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"], what


def test_hundreds_of_hostile_requests_get_4xx_in_openai_shape_and_the_router_keeps_serving():
    with stub_cluster(max_body_bytes=1024 * 1024) as c, httpx.Client(base_url=c.url, timeout=30) as client:
        statuses: dict[int, int] = {}
        cases = list(_bodies(random.Random(6)))
        for i, (path, raw, headers) in enumerate(cases):
            with client.stream("POST", path, content=raw, headers=headers) as resp:
                resp.read()
            _check(resp, f"case {i} {path} {raw[:120]!r}")
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
        for method, path in (("GET", "/v1/completions"), ("PUT", "/v1/chat/completions"), ("GET", "/v1/x" * 500),
                             ("DELETE", "/v1/models"), ("POST", "/health")):
            _check(client.request(method, path), f"{method} {path[:40]}")
        assert len(cases) >= 400 and sum(n for s, n in statuses.items() if s >= 400) >= 300, statuses
        assert httpx.get(f"{c.url}/health").json()["status"] == "ok", "a hostile request took a node down"
        assert client.post("/v1/completions", json=completion()).status_code == 200
        assert c.prefills[0].active == c.decodes[0].active == 0
        assert c.metric("disagg_router_requests_in_flight") == 0
