"""Several decode nodes from a cluster file: `[[decode]]` twice (plus one prefill node, tcp transport) starts
through the launcher (deploy.cluster, attached), the router lists both decode nodes and spreads requests over
them (round robin: each serves half, its KV pulled from the one prefill node), and everything stops.

It needs a cluster of its own: the session's clusters have one decode node each. It stops the session's cluster
first (one cluster at a time on this box) and keeps to a few short requests; three vLLM servers on two cores
(prefill on core 0, both decode nodes on core 1: a decode node on its prefill node's core stalls its pulls
there) start in about a minute here."""

from __future__ import annotations

import textwrap

import httpx
import pytest

from deploy import cluster_file, cluster_plan
from deploy.cluster import Cluster, stop, up
from tests.integration import vllm_metrics
from tests.integration.cluster_manager import _processes_in
from tests.support.threaded_server import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
PULLED_TOKENS = "vllm:prompt_tokens_by_source_total[external_kv_transfer]"
REQUESTS = 4


def _cluster_file(tmp_path, model_dir) -> str:
    ports = [free_port() for _ in range(10)]
    return textwrap.dedent(f"""
        name = "xpyd-test"
        model = "{model_dir}"
        transport = "tcp"
        run_dir = "{tmp_path / 'run'}"
        ready_timeout_s = 500
        [hosts.here]
        address = "127.0.0.1"
        local = true
        [[prefill]]
        host = "here"
        port = {ports[0]}
        info_port = {ports[1]}
        kv_port = {ports[2]}
        cpu_cores = "0"
        [[decode]]
        host = "here"
        port = {ports[3]}
        info_port = {ports[4]}
        kv_port = {ports[5]}
        cpu_cores = "1"
        [[decode]]
        host = "here"
        port = {ports[6]}
        info_port = {ports[7]}
        kv_port = {ports[8]}
        cpu_cores = "1"
        [router]
        port = {ports[9]}
        [engine]
        prefix_caching = false
        max_model_len = 1024
        """)


def test_a_cluster_file_with_two_decode_nodes_starts_and_spreads_requests(clusters, tmp_path):
    from core.model import ensure_default_model

    model_dir = ensure_default_model()
    (tmp_path / "cluster.toml").write_text(_cluster_file(tmp_path, model_dir))
    spec = cluster_file.load(tmp_path / "cluster.toml")
    cluster = Cluster.of(spec, attached=True)
    assert [c.name for c in cluster.components] == ["prefill", "decode-1", "decode-2", "router"]
    decode_urls = [f"http://127.0.0.1:{node.port}" for node in spec.decode]
    clusters.stop()  # one cluster at a time
    up(cluster)
    try:
        router = cluster_plan.endpoint(spec)
        health = httpx.get(f"{router}/health", timeout=10).json()
        assert sorted(n["role"] for n in health["nodes"] if n["healthy"]) == ["decode", "decode", "prefill"]
        before = [vllm_metrics.read(url) for url in decode_urls]
        model = httpx.get(f"{router}/v1/models", timeout=10).json()["data"][0]["id"]
        for i in range(REQUESTS):
            body = {"model": model, "prompt": f"Request {i}: the lighthouse keepers of the northern coast " * 8,
                    "max_tokens": 4, "temperature": 0, "ignore_eos": True}
            resp = httpx.post(f"{router}/v1/completions", json=body, timeout=300)
            assert resp.status_code == 200, resp.text
        after = [vllm_metrics.read(url) for url in decode_urls]
        served = [vllm_metrics.delta(b, a, "vllm:request_success_total") for b, a in zip(before, after)]
        pulled = [vllm_metrics.delta(b, a, PULLED_TOKENS) for b, a in zip(before, after)]
        assert served == [REQUESTS / 2, REQUESTS / 2], served
        assert all(tokens > 0 for tokens in pulled), pulled
    finally:
        problems = stop(cluster, cluster.components)
    assert not problems and not _processes_in(tmp_path / "run")
