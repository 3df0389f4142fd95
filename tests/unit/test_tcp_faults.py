"""The test-only fault hook of the block server (`DISAGG_TCP_FAULT_FILE`): a corrupted or cut transfer,
injected by the real BlockServer, is caught by the real pull_blocks and never passes as valid KV."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.support.kv_arrays import kv_arrays
from transport.tcp import wire
from transport.tcp.blocks import RegionBlockStore
from transport.tcp.client import pull_blocks
from transport.tcp.faults import Fault, FaultFile
from transport.tcp.lease import LeaseTable
from transport.tcp.server import BlockServer
from transport.tcp.errors import TransferTimeoutError
from transport.tcp.settings import TcpConnectorSettings
from transport.tcp.wire import PullRequest

pytestmark = pytest.mark.timeout(20)

LAYERS, BLOCKS, BLOCK_SHAPE = 3, 8, (2, 16, 8)


def arrays(seed: int | None) -> list[np.ndarray]:
    return kv_arrays(LAYERS, BLOCKS, BLOCK_SHAPE, seed)


@pytest.fixture
def prefill(tmp_path):
    """(server, leases, src arrays, a pristine copy of them, fault file path, served list)."""
    src, leases, served = arrays(seed=2), LeaseTable(), []
    fault_file = tmp_path / "fault"
    server = BlockServer(RegionBlockStore.from_arrays(src, layout_id=7), leases, "127.0.0.1", 0,
                         transfer_timeout_s=5.0, publish_wait_s=0.1, fault_file=str(fault_file),
                         on_served=lambda *a: served.append(a))
    server.start()
    yield server, leases, src, [a.copy() for a in src], fault_file, served
    server.stop()


def pull(server, request_id: str, local_blocks: list[int],
         transfer_timeout_s: float = 5.0) -> tuple[list[np.ndarray], bool]:
    """Pull into fresh arrays; (arrays, committed), committed only when pull_blocks returned."""
    dst = arrays(seed=None)
    store = RegionBlockStore.from_arrays(dst, layout_id=7)
    views, commit = store.write_views(local_blocks)
    pull_blocks("127.0.0.1", server.port, request_id, PullRequest(0, len(local_blocks), store.block_nbytes, 7),
                views, connect_timeout_s=2.0, transfer_timeout_s=transfer_timeout_s)
    commit()
    return dst, True


def assert_intact(dst, src, remote, local):
    for layer in range(LAYERS):
        np.testing.assert_array_equal(dst[layer][local], src[layer][remote])


@pytest.mark.parametrize("frame_limit", [None, 1000], ids=["one-frame", "many-frames"])
def test_corrupt_once_is_caught_by_the_checksum_and_only_once(prefill, monkeypatch, frame_limit):
    server, leases, src, pristine, fault_file, _ = prefill
    if frame_limit:
        monkeypatch.setattr(wire, "MAX_DATA_PAYLOAD_BYTES", frame_limit)
    fault_file.write_text("corrupt once\n")
    leases.publish("req-c", [5, 1, 6], lease_s=30)
    with pytest.raises(wire.ChecksumError):
        pull(server, "req-c", [0, 1, 2])
    assert fault_file.read_text() == ""  # taken
    assert_intact(src, pristine, range(BLOCKS), range(BLOCKS))  # the KV memory itself was not touched
    assert leases.drain_finished() == ({"req-c"}, set())  # the decode side still released the blocks
    leases.publish("req-c2", [5, 1, 6], lease_s=30)
    dst, _ = pull(server, "req-c2", [0, 1, 2])
    assert_intact(dst, src, [5, 1, 6], [0, 1, 2])


@pytest.mark.parametrize("frame_limit", [None, 1000], ids=["one-frame", "many-frames"])
def test_truncate_once_is_caught_and_the_blocks_stay_for_a_retry(prefill, monkeypatch, frame_limit):
    server, leases, src, _, fault_file, served = prefill
    if frame_limit:
        monkeypatch.setattr(wire, "MAX_DATA_PAYLOAD_BYTES", frame_limit)
    fault_file.write_text("truncate once")
    leases.publish("req-t", [3, 4], lease_s=30)
    with pytest.raises(wire.TruncatedError):
        pull(server, "req-t", [6, 7])
    assert served == [] and leases.pending() == 1 and fault_file.read_text() == ""
    dst, _ = pull(server, "req-t", [6, 7])
    assert_intact(dst, src, [3, 4], [6, 7])


def test_a_stalled_transfer_times_out_on_the_decode_side_and_the_blocks_stay_for_a_retry(prefill):
    server, leases, src, _, fault_file, served = prefill
    fault_file.write_text("stall once")
    leases.publish("req-s", [2, 5], lease_s=30)
    started_s = time.monotonic()
    with pytest.raises(TransferTimeoutError):
        pull(server, "req-s", [0, 1], transfer_timeout_s=1.0)
    assert 0.9 < time.monotonic() - started_s < 4.0, "the pull must give up at its transfer timeout"
    assert served == [] and fault_file.read_text() == ""
    deadline_s = time.monotonic() + 5.0
    while leases.pending() != 1 and time.monotonic() < deadline_s:  # the server notices the peer left
        time.sleep(0.05)
    dst, _ = pull(server, "req-s", [0, 1])
    assert_intact(dst, src, [2, 5], [0, 1])


def test_a_fault_without_once_applies_to_every_pull(prefill):
    server, leases, _, _, fault_file, _ = prefill
    fault_file.write_text("corrupt")
    for request_id in ("a", "b"):
        leases.publish(request_id, [1], lease_s=30)
        with pytest.raises(wire.ChecksumError):
            pull(server, request_id, [0])
    assert fault_file.read_text() == "corrupt"


@pytest.mark.parametrize("content", [None, "", "\n", "explode", "corrupt twice", "truncate once more"])
def test_missing_empty_or_unknown_fault_file_means_no_fault(prefill, content):
    server, leases, src, _, fault_file, _ = prefill
    if content is not None:
        fault_file.write_text(content)
    leases.publish("req-n", [2, 7], lease_s=30)
    dst, committed = pull(server, "req-n", [0, 1])
    assert committed
    assert_intact(dst, src, [2, 7], [0, 1])


def test_fault_file_parsing(tmp_path):
    path = tmp_path / "f"
    faults = FaultFile(path)
    assert faults.take() is None
    path.write_text(" truncate \n once\n")
    assert faults.take() is Fault.TRUNCATE and faults.take() is None
    path.write_text("corrupt")
    assert faults.take() is Fault.CORRUPT and faults.take() is Fault.CORRUPT
    path.write_text("stall once")
    assert faults.take() is Fault.STALL and faults.take() is None


def test_the_hook_is_off_unless_the_environment_names_a_file():
    assert TcpConnectorSettings.from_extra_config({}).fault_file is None
    assert TcpConnectorSettings.from_extra_config({}, {"DISAGG_TCP_FAULT_FILE": "/tmp/f"}).fault_file == "/tmp/f"
    assert BlockServer(RegionBlockStore.from_arrays(arrays(None)), LeaseTable(), "127.0.0.1", 0)._faults is None
