"""A sweep of malformed and hostile requests: never a 5xx, every error in OpenAI's shape, still serving."""

from __future__ import annotations

import random

import httpx

from tests.support.hostile import check_answer, hostile_requests
from tests.support.stub_cluster import completion, stub_cluster


def test_hundreds_of_hostile_requests_get_4xx_in_openai_shape_and_the_router_keeps_serving():
    with stub_cluster(max_body_bytes=1024 * 1024) as c, httpx.Client(base_url=c.url, timeout=30) as client:
        statuses: dict[int, int] = {}
        cases = list(hostile_requests(random.Random(6), "stub-model"))
        for i, (path, raw, headers) in enumerate(cases):
            with client.stream("POST", path, content=raw, headers=headers) as resp:
                resp.read()
            check_answer(resp, f"case {i} {path} {raw[:120]!r}")
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
        for method, path in (("GET", "/v1/completions"), ("PUT", "/v1/chat/completions"), ("GET", "/v1/x" * 500),
                             ("DELETE", "/v1/models"), ("POST", "/health")):
            check_answer(client.request(method, path), f"{method} {path[:40]}")
        assert len(cases) >= 400 and sum(n for s, n in statuses.items() if s >= 400) >= 300, statuses
        assert httpx.get(f"{c.url}/health").json()["status"] == "ok", "a hostile request took a node down"
        assert client.post("/v1/completions", json=completion()).status_code == 200
        assert c.prefills[0].active == c.decodes[0].active == 0
        assert c.metric("disagg_router_requests_in_flight") == 0
