"""Our TCP KV connector end to end: disaggregated output equals colocated token for token, the bytes
moved are the prompt's KV blocks, and a pull for KV that does not exist is recomputed, never decoded
from garbage. (Runs after the NIXL tests: file order; the cluster manager holds one cluster at a time.)"""

from __future__ import annotations

import math
import time

import httpx
import pytest

from tests.integration import vllm_metrics
from tests.integration.checks import assert_serves_and_drained
from tests.integration.prompts import prompt_of
from tests.integration.test_equality import SIZES, _body, disagg_and_colocated, run

pytestmark = pytest.mark.integration
KV_BYTES_PER_TOKEN = 46_080  # SmolLM2-135M in fp32
BLOCK_TOKENS = 128  # vLLM's CPU backend


@pytest.mark.parametrize("endpoint,stream", [("completions", False), ("chat", True)], ids=["completions", "chat-stream"])
@pytest.mark.parametrize("size", list(SIZES))
def test_tcp_disagg_equals_colocated_and_moves_the_prompts_blocks(tcp_cluster, size, endpoint, stream):
    prompt = prompt_of(tcp_cluster.model_dir, SIZES[size], tag=f"[tcp-{size}-{endpoint}]")
    disagg, colocated, deltas = disagg_and_colocated(tcp_cluster, endpoint, _body(tcp_cluster, endpoint, prompt, stream))

    assert disagg["text"] == colocated["text"] and disagg["token_ids"] == colocated["token_ids"]
    prompt_tokens = disagg["usage"]["prompt_tokens"]
    pulled_bytes = deltas.get("vllm:disagg_tcp_kv_pulled_bytes_total", 0.0)
    blocks = math.ceil(prompt_tokens / BLOCK_TOKENS)
    assert blocks * BLOCK_TOKENS * KV_BYTES_PER_TOKEN >= pulled_bytes >= prompt_tokens * KV_BYTES_PER_TOKEN - BLOCK_TOKENS * KV_BYTES_PER_TOKEN
    assert pulled_bytes > 0
    computed = deltas.get("vllm:prompt_tokens_by_source_total[local_compute]", 0.0)
    assert computed <= 1, "the decode node must not recompute a prompt it pulled"


def test_pull_of_unknown_request_is_recomputed_not_decoded_from_garbage(tcp_cluster):
    prompt = prompt_of(tcp_cluster.model_dir, 200, tag="[tcp-unknown]")
    body = {"model": tcp_cluster.model_name, "prompt": prompt, "max_tokens": 12, "temperature": 0,
            "return_token_ids": True}
    colocated = run(tcp_cluster.baseline_url, "completions", body)
    host, port = "127.0.0.1", _prefill_kv_port(tcp_cluster)
    fake = {"do_remote_prefill": True, "do_remote_decode": False, "remote_block_ids": [1, 2],
            "remote_engine_id": "no-such-engine", "remote_request_id": "never-published", "remote_host": host,
            "remote_port": port, "remote_num_tokens": 200, "tp_size": 1, "kv_transport": "tcp"}
    before = vllm_metrics.read(tcp_cluster.decode_vllm_url)
    resp = httpx.post(f"{tcp_cluster.decode_vllm_url}/v1/completions", json={**body, "kv_transfer_params": fake},
                      headers=tcp_cluster.node_headers, timeout=300)
    after = vllm_metrics.read(tcp_cluster.decode_vllm_url)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["token_ids"] == colocated["token_ids"]
    assert vllm_metrics.delta(before, after, "vllm:disagg_tcp_kv_failed_pulls_total") >= 1
    assert_serves_and_drained(tcp_cluster, "[after-unknown-pull]")


def _prefill_kv_port(cluster) -> int:
    prefill_info_port = int(cluster.prefill_vllm_url.rsplit(":", 1)[1]) + 1
    info = httpx.get(f"http://127.0.0.1:{prefill_info_port}/info", headers=cluster.node_headers, timeout=10).json()
    assert info["transport"] == "tcp" and info["role"] == "prefill"
    return info["kv_port"]


def test_blocks_nobody_pulls_are_freed_when_the_lease_expires(tcp_cluster):
    from tests.integration.cluster_manager import KV_LEASE_S

    body = {"model": tcp_cluster.model_name, "prompt": prompt_of(tcp_cluster.model_dir, 300, tag="[tcp-lease]"),
            "max_tokens": 1, "stream": False,
            "kv_transfer_params": {"do_remote_decode": True, "do_remote_prefill": False}}
    before = vllm_metrics.read(tcp_cluster.prefill_vllm_url)
    resp = httpx.post(f"{tcp_cluster.prefill_vllm_url}/v1/completions", json=body, headers=tcp_cluster.node_headers,
                      timeout=300)
    assert resp.status_code == 200 and resp.json()["kv_transfer_params"]["remote_block_ids"]
    held = vllm_metrics.read(tcp_cluster.prefill_vllm_url)["vllm:kv_cache_usage_perc"]
    assert held > 0, "the prefill node must hold the blocks for the decode node"
    deadline_s = time.monotonic() + KV_LEASE_S + 30
    while vllm_metrics.read(tcp_cluster.prefill_vllm_url)["vllm:kv_cache_usage_perc"] > 0:
        assert time.monotonic() < deadline_s, "blocks not freed after the lease"
        time.sleep(1.0)
    after = vllm_metrics.read(tcp_cluster.prefill_vllm_url)
    assert vllm_metrics.delta(before, after, "vllm:disagg_tcp_kv_expired_leases_total") == 1
    assert_serves_and_drained(tcp_cluster, "[after-lease]")
