"""The TCP connector's vLLM glue without a vLLM server: scheduler-side planning, worker-side transfers.

Two `TcpConnectorWorker`s (prefill serving, decode pulling) over torch CPU tensors shaped like vLLM's KV
cache, driven by the metadata `TcpConnectorScheduler` builds from fake requests.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")

from vllm.v1.request import RequestStatus  # noqa: E402

from transport.tcp.metadata import PullSpec, TcpConnectorMetadata  # noqa: E402
from transport.tcp.scheduler_side import TcpConnectorScheduler  # noqa: E402
from transport.tcp.settings import TcpConnectorSettings  # noqa: E402
from transport.tcp.worker_side import TcpConnectorWorker  # noqa: E402

pytestmark = pytest.mark.timeout(120)

LAYERS, BLOCKS, BLOCK_SHAPE = 4, 12, (2, 8, 16)


def kv_caches(seed: int | None) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed or 0)
    caches = {}
    for layer in range(LAYERS):
        tensor = torch.zeros(BLOCKS, *BLOCK_SHAPE)
        if seed is not None:
            tensor.copy_(torch.randn(tensor.shape, generator=generator))
        caches[f"model.layers.{layer}.self_attn.attn"] = tensor
    return caches


@pytest.fixture
def pair():
    """(prefill worker, its KV, decode worker, its KV); the prefill worker serves on a free port."""
    settings = TcpConnectorSettings(port=0, lease_s=30, publish_wait_s=0.2, transfer_timeout_s=5)
    prefill, decode = TcpConnectorWorker(settings, serve_blocks=True), TcpConnectorWorker(settings, False)
    p_kv, d_kv = kv_caches(seed=11), kv_caches(seed=None)
    prefill.register_kv_caches(p_kv)
    decode.register_kv_caches(d_kv)
    yield prefill, p_kv, decode, d_kv
    prefill.shutdown()
    decode.shutdown()


def wait_results(worker, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sending, recving, failed = worker.get_transfer_results()
        if sending or recving:
            return sending, recving, failed
        time.sleep(0.01)
    raise AssertionError("no transfer result")


def spec(prefill, remote_id, local_blocks, first=0, awaiting=True):
    return PullSpec(remote_id, "127.0.0.1", prefill.server.port, local_blocks, first, awaiting)


def test_pull_lands_in_decode_kv_and_frees_prefill_blocks(pair):
    prefill, p_kv, decode, d_kv = pair
    prefill.start_transfers(TcpConnectorMetadata(reqs_to_send={"p-1": [5, 6, 7]}, lease_s=30))
    decode.start_transfers(TcpConnectorMetadata(reqs_to_recv={"d-1": spec(prefill, "p-1", [0, 1, 2])}))
    assert wait_results(decode) == (set(), {"d-1"}, set())
    assert decode.get_block_ids_with_load_errors() == set()
    for name in p_kv:
        assert d_kv[name][[0, 1, 2]].equal(p_kv[name][[5, 6, 7]])
    assert wait_results(prefill)[0] == {"p-1"}
    pulled = decode.get_kv_connector_stats().reduce()
    served = prefill.get_kv_connector_stats().reduce()
    block_nbytes = LAYERS * p_kv["model.layers.0.self_attn.attn"][0].nbytes
    assert pulled["Num successful transfers"] == 1 and pulled["Num failed transfers"] == 0
    assert pulled["Avg MB per transfer"] == round(3 * block_nbytes / 2**20, 3)
    assert served["Num served transfers"] == 1
    assert decode.get_kv_connector_stats() is None  # reset after each interval


def test_failed_pull_is_reported_with_its_blocks(pair):
    prefill, _, decode, d_kv = pair
    decode.start_transfers(TcpConnectorMetadata(reqs_to_recv={"d-2": spec(prefill, "never", [3, 4])}))
    assert wait_results(decode) == (set(), {"d-2"}, {"d-2"})
    assert decode.get_block_ids_with_load_errors() == {3, 4}
    assert decode.get_block_ids_with_load_errors() == set()
    assert decode.get_kv_connector_stats().reduce()["Num failed transfers"] == 1


def test_release_only_frees_prefill_blocks_without_reporting_a_load(pair):
    prefill, _, decode, _ = pair
    prefill.start_transfers(TcpConnectorMetadata(reqs_to_send={"p-3": [1]}, lease_s=30))
    decode.start_transfers(TcpConnectorMetadata(reqs_to_recv={"d-3": spec(prefill, "p-3", [], awaiting=False)}))
    assert wait_results(prefill)[0] == {"p-3"}
    time.sleep(0.1)
    assert decode.get_transfer_results() == (set(), set(), set())


def test_unpulled_blocks_expire(pair):
    prefill, _, _, _ = pair
    prefill.start_transfers(TcpConnectorMetadata(reqs_to_send={"p-4": [2]}, lease_s=0.1))
    assert wait_results(prefill)[0] == {"p-4"}
    assert prefill.get_kv_connector_stats().reduce()["Num KV expired reqs"] == 1


def test_same_metadata_starts_transfers_once(pair):
    prefill, _, _, _ = pair
    meta = TcpConnectorMetadata(reqs_to_send={"p-5": [2]}, lease_s=30)
    prefill.start_transfers(meta)
    prefill.leases.release("p-5")
    prefill.start_transfers(meta)  # bound again: must not publish the released request again
    assert prefill.leases.pending() == 0


# ---- scheduler side ------------------------------------------------------------------------------------

def request(request_id, params, prompt_len=300, status=RequestStatus.WAITING):
    return SimpleNamespace(request_id=request_id, kv_transfer_params=params, prompt_token_ids=list(range(prompt_len)),
                           status=status, num_computed_tokens=prompt_len)


def blocks(ids, num_cached=0):
    groups = ([SimpleNamespace(block_id=b, block_hash=("h" if i < num_cached else None), is_null=False)
               for i, b in enumerate(ids)],)
    return SimpleNamespace(blocks=groups,
                           get_unhashed_block_ids_all_groups=lambda: [[b.block_id for b in groups[0]
                                                                        if b.block_hash is None]])


@pytest.fixture
def scheduler():
    return TcpConnectorScheduler(TcpConnectorSettings(host="10.0.0.1", port=5750, lease_s=12), "engine-p")


def test_prefill_holds_finished_blocks_and_says_where(scheduler):
    req = request("p-1", {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
                          "remote_block_ids": None, "remote_host": None, "remote_port": None},
                  status=RequestStatus.FINISHED_LENGTH_CAPPED)
    assert scheduler.get_num_new_matched_tokens(req, 0) == (0, False)
    delay_free, params = scheduler.request_finished(req, [4, 5, 6])
    assert delay_free is True
    assert params["do_remote_prefill"] is True and params["do_remote_decode"] is False
    assert (params["remote_block_ids"], params["remote_request_id"]) == ([4, 5, 6], "p-1")
    assert (params["remote_host"], params["remote_port"], params["remote_engine_id"]) == ("10.0.0.1", 5750, "engine-p")
    meta = scheduler.build_connector_meta()
    assert meta.reqs_to_send == {"p-1": [4, 5, 6]} and meta.lease_s == 12
    assert scheduler.build_connector_meta().reqs_to_send == {}


def test_aborted_prefill_frees_at_once(scheduler):
    req = request("p-2", {"do_remote_decode": True}, status=RequestStatus.FINISHED_ABORTED)
    assert scheduler.request_finished(req, [1]) == (False, None)
    assert scheduler.build_connector_meta().reqs_to_send == {}


def remote_params():
    return {"do_remote_prefill": True, "do_remote_decode": False, "remote_block_ids": [4, 5, 6],
            "remote_engine_id": "engine-p", "remote_request_id": "p-1", "remote_host": "10.0.0.1",
            "remote_port": 5750}


def test_decode_pulls_whole_prompt_once(scheduler):
    req = request("d-1", remote_params())
    assert scheduler.get_num_new_matched_tokens(req, 0) == (300, True)
    scheduler.update_state_after_alloc(req, blocks([7, 8, 9]), 300)
    scheduler.update_state_after_alloc(req, blocks([7, 8, 9, 10]), 0)  # second call after the load: no-op
    meta = scheduler.build_connector_meta()
    assert meta.reqs_to_recv == {"d-1": PullSpec("p-1", "10.0.0.1", 5750, [7, 8, 9], 0, True)}
    assert scheduler.request_finished(req, [7, 8, 9]) == (False, None)
    assert scheduler.build_connector_meta().reqs_to_recv == {}


def test_decode_continuing_from_the_first_token_loads_only_the_prefill_nodes_prompt(scheduler):
    """The router sends prompt + the prefill node's first token (301 tokens); the prefill node computed 300:
    300 load, and the first token's forward pass (the one that samples the second token) runs here."""
    req = request("d-6", {**remote_params(), "remote_num_tokens": 300}, prompt_len=301)
    assert scheduler.get_num_new_matched_tokens(req, 0) == (300, True)
    assert scheduler.get_num_new_matched_tokens(req, 128) == (172, True)
    same = request("d-7", {**remote_params(), "remote_num_tokens": 300}, prompt_len=300)
    assert scheduler.get_num_new_matched_tokens(same, 0) == (300, True)  # the prompt as prefilled: all of it


def test_decode_with_local_prefix_hit_pulls_the_tail(scheduler):
    req = request("d-2", remote_params())
    assert scheduler.get_num_new_matched_tokens(req, 128) == (172, True)
    scheduler.update_state_after_alloc(req, blocks([3, 8, 9], num_cached=1), 172)
    assert scheduler.build_connector_meta().reqs_to_recv["d-2"] == PullSpec("p-1", "10.0.0.1", 5750, [8, 9], 1, True)


def test_decode_full_local_hit_or_abort_only_releases(scheduler):
    hit = request("d-3", remote_params())
    scheduler.update_state_after_alloc(hit, blocks([3, 4, 5], num_cached=3), 0)
    aborted = request("d-4", remote_params(), status=RequestStatus.FINISHED_ABORTED)
    assert scheduler.request_finished(aborted, []) == (False, None)
    recv = scheduler.build_connector_meta().reqs_to_recv
    assert recv == {"d-3": PullSpec("p-1", "10.0.0.1", 5750, [], 0, False),
                    "d-4": PullSpec("p-1", "10.0.0.1", 5750, [], 0, False)}


def test_decode_without_remote_endpoint_computes_locally(scheduler):
    req = request("d-5", {"do_remote_prefill": True, "remote_request_id": "p-1"})
    assert scheduler.get_num_new_matched_tokens(req, 0) == (0, False)
    scheduler.update_state_after_alloc(req, blocks([1, 2, 3]), 0)
    assert scheduler.build_connector_meta().reqs_to_recv == {}


def test_pull_refused_for_a_different_cluster_token_fails_and_is_counted_on_both_sides():
    settings = dict(port=0, lease_s=30, publish_wait_s=0.2, transfer_timeout_s=5)
    prefill = TcpConnectorWorker(TcpConnectorSettings(**settings, cluster_token=b"A"), serve_blocks=True)
    decode = TcpConnectorWorker(TcpConnectorSettings(**settings, cluster_token=b"B"), serve_blocks=False)
    d_kv = kv_caches(seed=None)
    prefill.register_kv_caches(kv_caches(seed=11))
    decode.register_kv_caches(d_kv)
    try:
        prefill.start_transfers(TcpConnectorMetadata(reqs_to_send={"p-9": [1, 2]}, lease_s=30))
        decode.start_transfers(TcpConnectorMetadata(reqs_to_recv={"d-9": spec(prefill, "p-9", [3, 4])}))
        assert wait_results(decode) == (set(), {"d-9"}, {"d-9"})  # vLLM recomputes (or fails) it
        assert decode.get_block_ids_with_load_errors() == {3, 4}
        assert not any(t.any() for t in d_kv.values())
        assert decode.get_kv_connector_stats().reduce()["Num failed transfers"] == 1
        assert prefill.get_kv_connector_stats().reduce()["Num unauthorized frames"] == 1
        assert prefill.leases.pending() == 1  # nobody proved the token: the lease frees them
    finally:
        prefill.shutdown()
        decode.shutdown()
