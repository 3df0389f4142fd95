"""Corrupted, cut or stalled KV never produces tokens: with the prefill node's test-only fault hook
(transport/tcp/faults.py) corrupting, truncating or stalling one pull (a stall ends at the decode node's
transfer timeout, 8 s in the test cluster), a greedy request through the router still returns exactly the
colocated output (the decode node recomputes), the failed pull is counted, nothing stays in use, and the next
request is served from a good pull. The tcp cluster runs with a cluster token: a pull without it is refused.
(Runs on the session's tcp cluster.)"""

from __future__ import annotations

import time

import pytest

from tests.integration import vllm_metrics
from tests.integration.checks import assert_serves_and_drained
from tests.integration.cluster_manager import _drained
from tests.integration.prompts import prompt_of
from tests.integration.test_equality import _body, disagg_and_colocated
from tests.integration.test_transport_tcp import _prefill_kv_port
from transport.tcp import wire
from transport.tcp.client import pull_blocks
from transport.tcp.wire import ErrorCode, PullRequest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
FAILED = "vllm:disagg_tcp_kv_failed_pulls_total"
METRIC_WAIT_S = 15.0


def _wait_delta(url: str, before: dict[str, float], key: str, at_least: float) -> float:
    """The metric's increase since `before`, once it reaches `at_least` or METRIC_WAIT_S passed."""
    deadline_s = time.monotonic() + METRIC_WAIT_S
    while True:
        got = vllm_metrics.delta(before, vllm_metrics.read(url), key)
        if got >= at_least or time.monotonic() > deadline_s:
            return got
        time.sleep(0.5)


def _disagg_equals_colocated(cluster, tag: str) -> tuple[dict, dict[str, float]]:
    prompt = prompt_of(cluster.model_dir, 300, tag=tag)
    before = vllm_metrics.read(cluster.decode_vllm_url)
    disagg, colocated, deltas = disagg_and_colocated(cluster, "completions",
                                                     _body(cluster, "completions", prompt, stream=False))
    assert disagg["text"] == colocated["text"] and disagg["token_ids"] == colocated["token_ids"]
    assert len(disagg["token_ids"]) > 0
    deltas[FAILED] = _wait_delta(cluster.decode_vllm_url, before, FAILED, deltas.get(FAILED, 0.0))
    return disagg, deltas


@pytest.mark.parametrize("fault", ["corrupt once", "truncate once", "stall once"])
def test_faulty_pull_is_recomputed_token_for_token_and_leaves_nothing(tcp_cluster, fault):
    assert tcp_cluster.fault_file is not None
    before = vllm_metrics.read(tcp_cluster.decode_vllm_url)
    tcp_cluster.fault_file.write_text(fault)
    try:
        disagg, deltas = _disagg_equals_colocated(tcp_cluster, f"[tcp-fault-{fault}]")
    finally:
        left = tcp_cluster.fault_file.read_text()
        tcp_cluster.fault_file.write_text("")
    assert left == "", "the prefill node never took the fault"
    assert _wait_delta(tcp_cluster.decode_vllm_url, before, FAILED, 1) == 1
    computed = deltas.get("vllm:prompt_tokens_by_source_total[local_compute]", 0.0)
    assert computed >= disagg["usage"]["prompt_tokens"] - 1, "the decode node must recompute the prompt"
    assert _drained(tcp_cluster) == {}, "a request or KV block is still in use"

    _, deltas = _disagg_equals_colocated(tcp_cluster, f"[tcp-after-{fault}]")
    assert deltas[FAILED] == 0 and deltas.get("vllm:disagg_tcp_kv_pulled_bytes_total", 0.0) > 0
    assert_serves_and_drained(tcp_cluster, f"[after-{fault}]")


def test_pull_without_the_cluster_token_is_refused(tcp_cluster):
    assert tcp_cluster.cluster_token
    port = _prefill_kv_port(tcp_cluster)
    before = vllm_metrics.read(tcp_cluster.prefill_vllm_url)
    view = memoryview(bytearray(16))
    for token, code in ((None, ErrorCode.UNAUTHORIZED), (b"not-the-token", ErrorCode.UNAUTHORIZED),
                        (tcp_cluster.cluster_token.encode(), ErrorCode.UNKNOWN_REQUEST)):
        with pytest.raises(wire.RemoteError) as refused:
            pull_blocks("127.0.0.1", port, "never-published", PullRequest(0, 1, 16, 0), [view],
                        token=token, transfer_timeout_s=30)
        assert refused.value.code == code
    _disagg_equals_colocated(tcp_cluster, "[tcp-token]")  # the engine steps, so its counters are flushed
    key = "vllm:disagg_tcp_kv_unauthorized_frames_total"
    assert _wait_delta(tcp_cluster.prefill_vllm_url, before, key, 2) == 2
    assert_serves_and_drained(tcp_cluster, "[after-token]")
