"""The hostile sweep of the router unit tests (tests/support/hostile.py: ~500 malformed and hostile bodies),
against real vLLM nodes behind the router: what passes the router's checks reaches vLLM, and whatever vLLM
says must still be a 4xx in OpenAI's shape or a normal answer, never a 5xx; the cluster keeps serving and
nothing stays in use."""

from __future__ import annotations

import random
import time

import httpx
import pytest

from tests.integration.checks import assert_serves_and_drained, router_sample
from tests.support.hostile import check_answer, hostile_requests

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def test_hundreds_of_hostile_requests_to_real_nodes_never_get_a_5xx(tcp_cluster):
    cases = list(hostile_requests(random.Random(6), tcp_cluster.model_name))
    statuses: dict[int, int] = {}
    started_s = time.monotonic()
    with httpx.Client(base_url=tcp_cluster.router_url, timeout=120) as client:
        for i, (path, raw, headers) in enumerate(cases):
            with client.stream("POST", path, content=raw, headers=headers) as resp:
                resp.read()
            check_answer(resp, f"case {i} {path} {raw[:160]!r}")
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
    print(f"{len(cases)} hostile requests in {time.monotonic() - started_s:.0f} s: {sorted(statuses.items())}")
    assert len(cases) >= 400 and statuses.get(200, 0) > 0, statuses
    assert router_sample(tcp_cluster.router_url, "disagg_router_nodes_healthy") == 2, "a request took a node down"
    assert_serves_and_drained(tcp_cluster, "[after-hostile]")
