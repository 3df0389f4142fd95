"""A prefill node killed (SIGKILL of its supervisor and its whole vLLM server) while routers still believe it
healthy: with a second prefill node the request is retried there, without one the decode node prefills it
itself (colocated fallback), both token for token equal to colocated and counted; with the fallback off the
client gets an explicit error naming the node. Real processes: a second prefill node and three routers started
here beside the session's tcp cluster (health checks slowed so the routers meet the dead node themselves)."""

from __future__ import annotations

import httpx
import pytest

from tests.integration import vllm_metrics
from tests.integration.checks import (assert_serves_and_drained, extra_router, kill_node, router_sample,
                                      second_prefill_node)
from tests.integration.prompts import prompt_of
from tests.integration.test_equality import disagg_and_colocated

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
SERVED = "vllm:disagg_tcp_kv_served_bytes_total"
LOCAL = "vllm:prompt_tokens_by_source_total[local_compute]"
EXTERNAL = "vllm:prompt_tokens_by_source_total[external_kv_transfer]"
SLOW_HEALTH = ("--health-interval-s", "600")


def _equal(cluster, router_url: str, tag: str) -> dict[str, float]:
    """One greedy request through `router_url` equals colocated; the decode node's metric deltas over it."""
    body = {"model": cluster.model_name, "prompt": prompt_of(cluster.model_dir, 40, tag=tag), "max_tokens": 6,
            "temperature": 0, "ignore_eos": True, "return_token_ids": True}
    disagg, colocated, deltas = disagg_and_colocated(cluster, "completions", body, router_url=router_url)
    assert disagg["token_ids"] == colocated["token_ids"] and len(disagg["token_ids"]) == 6
    deltas["prompt_tokens"] = disagg["usage"]["prompt_tokens"]
    return deltas


def _served(*urls: str) -> list[float]:
    return [vllm_metrics.read(url).get(SERVED, 0.0) for url in urls]


def test_a_killed_prefill_node_is_retried_elsewhere_or_falls_back_to_colocated(tcp_cluster):
    p1 = tcp_cluster.prefill_vllm_url
    with second_prefill_node(tcp_cluster) as (p2, p2_supervisor), \
            extra_router(tcp_cluster, [p1, p2], *SLOW_HEALTH) as both, \
            extra_router(tcp_cluster, [p2], *SLOW_HEALTH) as only_p2, \
            extra_router(tcp_cluster, [p2], *SLOW_HEALTH, "--no-colocated-fallback") as strict:
        before = _served(p1, p2)
        for i in range(2):  # round robin: one request on each prefill node
            _equal(tcp_cluster, both, f"[two-prefills-{i}]")
        assert all(a > b for a, b in zip(_served(p1, p2), before)), "both prefill nodes must serve"

        kill_node(p2, p2_supervisor, tcp_cluster)
        before = _served(p1)[0]
        for i in range(2):  # one of them meets the dead node first
            deltas = _equal(tcp_cluster, both, f"[retried-{i}]")
            assert deltas.get(EXTERNAL, 0.0) >= deltas["prompt_tokens"] - 1, "not served by the other prefill node"
        assert _served(p1)[0] > before
        assert router_sample(both, "disagg_router_retries_total") == 1
        assert router_sample(both, "disagg_router_fallbacks_total") == 0

        deltas = _equal(tcp_cluster, only_p2, "[fallback]")
        assert deltas.get(LOCAL, 0.0) >= deltas["prompt_tokens"] - 1 and deltas.get(EXTERNAL, 0.0) == 0
        assert router_sample(only_p2, "disagg_router_fallbacks_total", reason="prefill_unreachable") == 1

        refused = _strict_refusal(tcp_cluster, strict)
        assert refused.status_code in (502, 503), refused.text
        assert "prefill" in refused.json()["error"]["message"] and p2.rsplit(":", 1)[1] in refused.text
    assert_serves_and_drained(tcp_cluster, "[after-prefill-kill]")


def _strict_refusal(cluster, router_url: str) -> httpx.Response:
    body = {"model": cluster.model_name, "prompt": "hello", "max_tokens": 2}
    return httpx.post(f"{router_url}/v1/completions", json=body, timeout=60)
