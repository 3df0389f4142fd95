"""Conditional disaggregation on real vLLM (the session's tcp cluster): a router with the conditional decider in
front of the same two nodes keeps a short prompt on the decode node (no prefill leg, no KV pulled) and sends a
long one through the prefill node (its KV pulled); both answers equal the colocated baseline's token for token,
streamed and not, and both decisions are counted in the router's /metrics.

The extra router runs in this process (uvicorn in a thread) against the cluster's nodes, with the remote
path's fixed cost set to 0 and the link bandwidth given, so the decision depends only on the cost model's
terms the test controls: an idle decode node stalls nothing but the arrivals meanwhile (this test's own
requests), so a 16-token prompt's local cost (~1e-4 s) stays below its transfer (~0.8 ms), while a
1,200-token prompt's local cost (~0.4 s) is above its transfer (~55 ms)."""

from __future__ import annotations

import httpx
import pytest

from router.app import create_app
from router.config import RouterConfig
from router.decider import DeciderSettings
from tests.integration import vllm_metrics
from tests.integration.prompts import prompt_of
from tests.integration.test_equality import run
from tests.support.threaded_server import serve

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
PULLED_TOKENS = "vllm:prompt_tokens_by_source_total[external_kv_transfer]"
DECIDER = DeciderSettings(policy="conditional", remote_overhead_s=0.0, kv_link_gbit_per_s=8.0)


def _info_url(vllm_url: str) -> str:
    host, port = vllm_url.rsplit(":", 1)
    return f"{host}:{int(port) + 1}"


def _decisions(url: str) -> dict[str, float]:
    found = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("disagg_router_decisions_total{"):
            labels = line[line.index("{") + 1:line.index("}")]
            found[labels] = float(line.rsplit(" ", 1)[1])
    return found


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_decided_local_and_one_decided_remote_both_equal_colocated(tcp_cluster, stream):
    config = RouterConfig(mode="disagg", prefill_urls=(_info_url(tcp_cluster.prefill_vllm_url),),
                          decode_urls=(_info_url(tcp_cluster.decode_vllm_url),), decider=DECIDER,
                          cluster_token=tcp_cluster.cluster_token, port=8000)
    short, long = (prompt_of(tcp_cluster.model_dir, n, tag=f"conditional-{n}-{stream}") for n in (16, 1200))
    with serve(create_app(config)) as url:
        for prompt, decision in ((short, "local"), (long, "remote")):
            body = {"model": tcp_cluster.model_name, "prompt": prompt, "max_tokens": 12, "temperature": 0,
                    "ignore_eos": True, "stream": stream}
            if stream:
                body["stream_options"] = {"include_usage": True}
            before = vllm_metrics.read(tcp_cluster.decode_vllm_url)
            answer = run(url, "completions", body)
            after = vllm_metrics.read(tcp_cluster.decode_vllm_url)
            assert answer["text"] == run(tcp_cluster.baseline_url, "completions", body)["text"], decision
            pulled = vllm_metrics.delta(before, after, PULLED_TOKENS)
            assert (pulled > 0) == (decision == "remote"), (decision, pulled)
        decisions = _decisions(url)
    assert decisions == {'decision="local",reason="local_cheaper"': 1.0,
                         'decision="remote",reason="remote_cheaper"': 1.0}
