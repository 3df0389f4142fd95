"""KV wire dtypes on real vLLM over our TCP connector (the session's `tcp_cluster`): each request names its wire
dtype in `kv_transfer_params`, so one cluster serves all of them. `native` equals colocated token for token;
`bf16` and `int8` move 1/2 and 68/256 of the fp32 KV bytes (the decode node's wire and restored-KV counters)
with no failed pull, and their first 4 tokens equal colocated for the smoke set's 10 prompts. Their quality
figures (identical share, first divergence, mean |Δ log p|) are printed, not asserted: `disagg bench quality`
measures them on the whole prompt set."""

from __future__ import annotations

import time

import httpx
import pytest

from bench.quality import Comparison, Nodes, colocated, disaggregated
from bench.quality_prompts import SMOKE_SET_SIZE, prompt_set
from tests.integration import vllm_metrics
from tests.integration.checks import assert_serves_and_drained

pytestmark = pytest.mark.integration
MAX_TOKENS = 32
PULLED, RESTORED = "vllm:disagg_tcp_kv_pulled_bytes_total", "vllm:disagg_tcp_kv_restored_bytes_total"
PULLS, FAILED = "vllm:disagg_tcp_kv_pull_seconds_count", "vllm:disagg_tcp_kv_failed_pulls_total"
WIRE_FRACTION = {"native": 1.0, "bf16": 0.5, "int8": (64 + 4) / (64 * 4)}  # SmolLM2: fp32 KV, head_size 64


def _pass(client: httpx.Client, nodes: Nodes, decode_url: str, prompts, wire_dtype: str, tag: str):
    """Every prompt disaggregated in `wire_dtype`; (completions, decode-node metric deltas)."""
    before = vllm_metrics.read(decode_url)
    outputs = [disaggregated(client, nodes, p.text, MAX_TOKENS, wire_dtype, f"{tag}-{wire_dtype}") for p in prompts]
    deadline_s = time.monotonic() + 15  # the connector's stats reach /metrics with the engine's next step
    while True:
        after = vllm_metrics.read(decode_url)
        if vllm_metrics.delta(before, after, PULLS) >= len(prompts) or time.monotonic() > deadline_s:
            break
        time.sleep(0.5)
    return outputs, {key: vllm_metrics.delta(before, after, key) for key in (PULLED, RESTORED, PULLS, FAILED)}


@pytest.mark.timeout(1200)
def test_wire_dtypes_move_their_fraction_and_keep_the_first_tokens(tcp_cluster):
    nodes = Nodes(tcp_cluster.prefill_vllm_url, tcp_cluster.decode_vllm_url, tcp_cluster.model_name,
                  tcp_cluster.cluster_token)
    prompts = prompt_set(SMOKE_SET_SIZE)
    tag = f"wire-{time.monotonic_ns()}"
    with httpx.Client() as client:
        reference = [colocated(client, nodes, p.text, MAX_TOKENS, f"{tag}-colocated") for p in prompts]
        runs = {wire: _pass(client, nodes, tcp_cluster.decode_vllm_url, prompts, wire, tag) for wire in WIRE_FRACTION}

    for wire, (outputs, deltas) in runs.items():
        comparisons = [Comparison.of(ref, out) for ref, out in zip(reference, outputs)]
        identical = sum(c.identical for c in comparisons)
        diffs = [c.mean_abs_logprob_diff for c in comparisons if c.mean_abs_logprob_diff is not None]
        print(f"{wire}: {identical}/{len(prompts)} identical over {MAX_TOKENS} tokens, first divergences "
              f"{[c.first_divergence for c in comparisons]}, mean |dlogp| {sum(diffs) / max(len(diffs), 1):.2e}; "
              f"pulled {deltas[PULLED]:.0f} B on the wire for {deltas[RESTORED]:.0f} B of KV "
              f"({deltas[PULLED] / max(deltas[RESTORED], 1):.4f})")
        assert deltas[PULLS] == len(prompts) and deltas[FAILED] == 0, (wire, deltas)
        assert deltas[RESTORED] == runs["native"][1][RESTORED] > 0  # the same prompts restore the same KV
        assert deltas[PULLED] == pytest.approx(deltas[RESTORED] * WIRE_FRACTION[wire], rel=1e-9), (wire, deltas)
        assert all(len(out.token_ids) == MAX_TOKENS for out in outputs)
        if wire == "native":
            assert identical == len(prompts), [c.first_divergence for c in comparisons]
        for prompt, comparison in zip(prompts, comparisons):
            assert comparison.first_divergence is None or comparison.first_divergence >= 4, \
                (wire, prompt.index, prompt.length, comparison)
    assert_serves_and_drained(tcp_cluster, "[after-wire-dtypes]")
