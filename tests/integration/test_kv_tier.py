"""The KV tier with real vLLM servers and a real Redis server (the one `disagg up` starts for `[kv_tier]`),
over the tcp transport, two prefill nodes (tier_cluster.py says why this test has its own cluster):

- greedy output with a tier hit, a local prefix-cache hit and a full miss all equal colocated;
- a conversation's second turn, routed (round robin) to the prefill node that did not see the first, loads the
  first turn's prefix from the tier (tier hits counted; vLLM counts those prompt tokens as external);
- Redis hung, then killed (its supervisor held so it cannot restart it): every request still 200 and equal
  colocated, tier errors and misses counted; Redis back: hits resume;
- a corrupted entry is detected, recomputed (output still equal) and counted;
- Redis holds its memory cap and counts its evictions (its own INFO and the nodes' gauge).
Prompts are ~700 tokens: 5 full 128-token blocks the tier can serve (never the last prompt token)."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import pytest

from bench.quality import colocated, disaggregated
from tests.integration import vllm_metrics
from tests.integration.prompts import prompt_of
from tests.integration.tier_cluster import EXTERNAL, HIT_BLOCKS, LOCAL_HIT, TierCluster, tier_cluster
from tests.support.redis_server import require_redis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
BLOCK = 128
PROMPT_TOKENS = 700
TIER_BLOCKS = (PROMPT_TOKENS - 1) // BLOCK  # 5
MAX_BYTES = 80 * 2**20  # about 14 blocks of SmolLM2's fp32 KV (5.9 MB each)
MAX_TOKENS = 12
ERRORS = "vllm:disagg_kv_tier_errors_total"
MISSES = "vllm:disagg_kv_tier_miss_blocks_total"


@pytest.fixture(scope="module")
def tier(clusters, tmp_path_factory):
    require_redis()
    clusters.stop()  # one cluster at a time on this box
    with tier_cluster(clusters.model_dir, tmp_path_factory.mktemp("tier-tcp-redis"), "tcp", "redis",
                      MAX_BYTES) as cluster:
        yield cluster


def _deltas(cluster: TierCluster, before: list[dict[str, float]]) -> list[dict[str, float]]:
    time.sleep(1.0)  # the step's stats reach the API server's /metrics right after the response
    after = [cluster.metrics(i) for i in range(len(cluster.prefill_urls))]
    return [{key: vllm_metrics.delta(b, a, key) for key in a} for b, a in zip(before, after)]


def _snapshot(cluster: TierCluster) -> list[dict[str, float]]:
    return [cluster.metrics(i) for i in range(len(cluster.prefill_urls))]


def test_tier_hit_local_hit_and_full_miss_all_equal_colocated(tier):
    prompt = prompt_of(tier.model_dir, PROMPT_TOKENS, tag="[three-ways]")
    with httpx.Client() as client:
        reference = colocated(client, tier.nodes(0), prompt, MAX_TOKENS, "ref-three-ways")
        stored = tier.entries()
        before = _snapshot(tier)
        miss = disaggregated(client, tier.nodes(0), prompt, MAX_TOKENS, None, "pd-three-ways")
        assert tier.wait_tier_entries(stored + TIER_BLOCKS) >= stored + TIER_BLOCKS, "prefill-1 stored its blocks"
        local = disaggregated(client, tier.nodes(0), prompt, MAX_TOKENS, None, "pd-three-ways")
        hit = disaggregated(client, tier.nodes(1), prompt, MAX_TOKENS, None, "pd-three-ways")
    first, second = _deltas(tier, before)
    assert miss.token_ids == reference.token_ids, "full miss"
    assert local.token_ids == reference.token_ids, "local prefix-cache hit"
    assert hit.token_ids == reference.token_ids, "tier hit"
    assert first.get(MISSES, 0) >= TIER_BLOCKS and first.get(HIT_BLOCKS, 0) == 0
    assert first.get(LOCAL_HIT, 0) >= TIER_BLOCKS * BLOCK
    assert second.get(HIT_BLOCKS, 0) == TIER_BLOCKS and second.get(EXTERNAL, 0) == TIER_BLOCKS * BLOCK
    assert second.get("vllm:disagg_kv_tier_loaded_bytes_total", 0) >= TIER_BLOCKS * BLOCK * 46_080


def _chat(url: str, model: str, messages: list[dict]) -> str:
    """One greedy chat turn's answer; the request must succeed (never a 5xx)."""
    body = {"model": model, "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def _served_by(deltas: list[dict[str, float]]) -> list[int]:
    return [i for i, d in enumerate(deltas) if d.get("vllm:prompt_tokens_total", 0) > 0]


def test_a_turn_on_the_node_that_never_saw_the_conversation_loads_its_prefix_from_the_tier(tier):
    question = prompt_of(tier.model_dir, PROMPT_TOKENS, tag="[conversation]") + "\nWhat is this about?"
    turn1 = [{"role": "user", "content": question}]
    stored, before = tier.entries(), _snapshot(tier)
    answer = _chat(tier.router_url, tier.model_name, turn1)
    assert answer == _chat(tier.baseline_url, tier.model_name, turn1)
    first = _deltas(tier, before)
    [node1] = _served_by(first)
    assert tier.wait_tier_entries(stored + TIER_BLOCKS) >= stored + TIER_BLOCKS

    turn2 = [*turn1, {"role": "assistant", "content": answer},
             {"role": "user", "content": "Say it in one sentence."}]
    before = _snapshot(tier)
    assert _chat(tier.router_url, tier.model_name, turn2) == _chat(tier.baseline_url, tier.model_name, turn2)
    second = _deltas(tier, before)
    [node2] = _served_by(second)
    assert node2 != node1, "round robin sent the second turn to the other prefill node"
    assert second[node2].get(HIT_BLOCKS, 0) >= TIER_BLOCKS
    assert second[node2].get(EXTERNAL, 0) >= TIER_BLOCKS * BLOCK, "prompt tokens by source: external"


def _supervisor_pid(cluster: TierCluster) -> int:
    return json.loads((cluster.log_dir / "kv-tier.pid").read_text())["pid"]


def _router_equals_baseline(cluster: TierCluster, tag: str) -> None:
    messages = [{"role": "user", "content": prompt_of(cluster.model_dir, PROMPT_TOKENS, tag=tag)}]
    assert _chat(cluster.router_url, cluster.model_name, messages) == \
        _chat(cluster.baseline_url, cluster.model_name, messages)


def test_redis_hung_or_stopped_requests_still_succeed_and_hits_resume_when_it_is_back(tier):
    redis_pid, supervisor = tier.tier_health()["redis_pid"], _supervisor_pid(tier)
    before = _snapshot(tier)
    os.kill(redis_pid, signal.SIGSTOP)  # hung: connections open, nothing answers
    try:
        _router_equals_baseline(tier, "[redis-hung]")
    finally:
        os.kill(redis_pid, signal.SIGCONT)
    os.kill(supervisor, signal.SIGSTOP)  # so that it cannot restart Redis yet
    try:
        os.kill(redis_pid, signal.SIGKILL)
        for i in range(3):  # both prefill nodes, each prompt twice through the router
            _router_equals_baseline(tier, f"[redis-down-{i // 2}]")
    finally:
        os.kill(supervisor, signal.SIGCONT)
    deltas = _deltas(tier, before)
    assert sum(d.get(ERRORS, 0) for d in deltas) >= 1, "tier errors counted"
    assert sum(d.get(MISSES, 0) for d in deltas) >= 3 * TIER_BLOCKS, "skipped lookups count as misses"
    assert sum(d.get(HIT_BLOCKS, 0) for d in deltas) == 0

    deadline_s = time.monotonic() + 60
    while (health := _health_or_none(tier)) is None or health["redis_pid"] == redis_pid:
        assert time.monotonic() < deadline_s, "the supervisor did not restart Redis"
        time.sleep(0.5)
    time.sleep(6.0)  # the nodes' circuit breakers (5 s) let the tier be tried again
    _tier_hit_on_the_other_node(tier, "[redis-back]")


def _health_or_none(cluster: TierCluster) -> dict | None:
    try:
        health = cluster.tier_health()
    except httpx.HTTPError:
        return None
    return health if health.get("status") == "ok" else None


def _tier_hit_on_the_other_node(cluster: TierCluster, tag: str) -> None:
    prompt = prompt_of(cluster.model_dir, PROMPT_TOKENS, tag=tag)
    with httpx.Client() as client:
        reference = colocated(client, cluster.nodes(0), prompt, MAX_TOKENS, f"ref-{tag}")
        stored = cluster.entries()
        assert disaggregated(client, cluster.nodes(0), prompt, MAX_TOKENS, None, tag).token_ids == reference.token_ids
        assert cluster.wait_tier_entries(stored + TIER_BLOCKS) >= stored + TIER_BLOCKS, "stores resumed"
        before = _snapshot(cluster)
        assert disaggregated(client, cluster.nodes(1), prompt, MAX_TOKENS, None, tag).token_ids == reference.token_ids
    assert _deltas(cluster, before)[1].get(HIT_BLOCKS, 0) == TIER_BLOCKS, "hits resumed"


def test_a_corrupted_entry_is_detected_recomputed_and_counted(tier):
    redis = tier.redis()
    prompt = prompt_of(tier.model_dir, PROMPT_TOKENS, tag="[corrupt]")
    with httpx.Client() as client:
        reference = colocated(client, tier.nodes(0), prompt, MAX_TOKENS, "ref-corrupt")
        known = set(redis.keys(b"disagg:kv:v1:*"))
        disaggregated(client, tier.nodes(0), prompt, MAX_TOKENS, None, "pd-corrupt")
        tier.wait_tier_entries(len(known) + TIER_BLOCKS)
        new = set(redis.keys(b"disagg:kv:v1:*")) - known
        assert len(new) >= TIER_BLOCKS
        corrupted = {}
        for key in new:  # one bit flipped in the last KV byte of every block of this prompt
            value = bytearray(redis.get(key))
            value[-1] ^= 0x01
            redis.set(key, bytes(value))
            corrupted[key] = bytes(value)
        before = _snapshot(tier)
        result = disaggregated(client, tier.nodes(1), prompt, MAX_TOKENS, None, "pd-corrupt")
    assert result.token_ids == reference.token_ids, "recomputed, not decoded from corrupt KV"
    second = _deltas(tier, before)[1]
    assert second.get("vllm:disagg_kv_tier_corrupt_entries_total", 0) >= 1
    assert second.get(ERRORS, 0) >= 1 and second.get("vllm:disagg_kv_tier_loaded_bytes_total", 0) == 0
    deadline_s = time.monotonic() + 20
    while all(redis.get(key) == value for key, value in corrupted.items()):
        assert time.monotonic() < deadline_s, "the corrupt entry was neither removed nor stored again"
        time.sleep(0.2)


def _redis_metrics(cluster: TierCluster) -> dict[str, float]:
    return vllm_metrics.parse(httpx.get(f"{cluster.tier_health_url}/metrics", timeout=5).text)


def test_redis_holds_its_memory_cap_and_counts_evictions(tier):
    before = _redis_metrics(tier)
    with httpx.Client() as client:
        for i in range(4):  # 4 x 5 blocks x 5.9 MB = 118 MB into an 80 MiB server
            prompt = prompt_of(tier.model_dir, PROMPT_TOKENS, tag=f"[fill-{i}]")
            disaggregated(client, tier.nodes(i % 2), prompt, 2, None, f"fill-{i}")
        time.sleep(2.5)  # the writers poll the server's eviction count every 2 s while writing
        for i in range(2):  # one more step on each node carries their stats out
            disaggregated(client, tier.nodes(i), prompt_of(tier.model_dir, PROMPT_TOKENS, tag=f"[fill-x{i}]"), 2,
                          None, f"fill-x{i}")
    after = _redis_metrics(tier)
    assert after["disagg_kv_tier_redis_used_memory_bytes"] <= MAX_BYTES * 1.05
    assert after["disagg_kv_tier_redis_maxmemory_bytes"] == MAX_BYTES
    evicted = after["disagg_kv_tier_redis_evicted_keys_total"] - before["disagg_kv_tier_redis_evicted_keys_total"]
    assert evicted >= 4
    time.sleep(1.0)
    gauges = [tier.metrics(i).get("vllm:disagg_kv_tier_evicted_entries", 0) for i in (0, 1)]
    assert max(gauges) > 0, f"the nodes' eviction gauge (the server's evicted_keys as they last saw it): {gauges}"
