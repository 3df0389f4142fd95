"""Pulls in a wire dtype over real sockets on 127.0.0.1: the prefill side converts, the decode side restores
within the codec's bound, the bytes on the wire are the stated fraction, checksums cover the converted bytes,
faults are still detected; and peers of another wire version are refused with both versions named."""

from __future__ import annotations

import socket
import struct

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numba")

from transport.tcp import wire  # noqa: E402
from transport.tcp.blocks import RegionBlockStore  # noqa: E402
from transport.tcp.client import pull_blocks  # noqa: E402
from transport.tcp.codec import Codec  # noqa: E402
from transport.tcp.lease import LeaseTable  # noqa: E402
from transport.tcp.server import BlockServer  # noqa: E402
from transport.tcp.wire import ErrorCode, FrameType, PullRequest  # noqa: E402
from transport.tcp.wire_dtype import WireDtype  # noqa: E402

pytestmark = pytest.mark.timeout(60)

HEAD_SIZE = 16
LAYERS, BLOCKS, BLOCK_SHAPE = 3, 12, (2, 32, 2 * HEAD_SIZE)  # [blocks, kv heads, block size, 2 * head size]


def arrays(seed: int | None) -> list[np.ndarray]:
    shape = (BLOCKS, *BLOCK_SHAPE)
    if seed is None:
        return [np.zeros(shape, np.float32) for _ in range(LAYERS)]
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape, dtype=np.float32) * 3 for _ in range(LAYERS)]


def store_of(layers: list[np.ndarray]) -> RegionBlockStore:
    return RegionBlockStore.from_arrays(layers, layout_id=11, kv_dtype="float32", row_elements=HEAD_SIZE)


@pytest.fixture
def prefill(tmp_path):
    src = arrays(seed=3)
    leases = LeaseTable()
    served: list[tuple[str, int, float]] = []
    fault_file = tmp_path / "fault"
    fault_file.write_text("")
    server = BlockServer(store_of(src), leases, "127.0.0.1", 0, transfer_timeout_s=5.0, publish_wait_s=0.2,
                         on_served=lambda *args: served.append(args), fault_file=str(fault_file))
    server.start()
    server.served, server.fault_file = served, fault_file
    yield server, leases, src
    server.stop()


def pull_as(server, request_id: str, wire_dtype: WireDtype, local_blocks: list[int]):
    dst = arrays(seed=None)
    store = store_of(dst)
    codec = None if wire_dtype is WireDtype.NATIVE else Codec(wire_dtype, "float32", HEAD_SIZE)
    request = PullRequest(0, len(local_blocks), store.block_nbytes, store.layout_id, wire_dtype)
    views, commit = store.write_views(local_blocks)
    result = pull_blocks("127.0.0.1", server.port, request_id, request, views, transfer_timeout_s=5.0, codec=codec)
    commit()
    return result, dst


@pytest.mark.parametrize("wire_dtype,fraction", [(WireDtype.NATIVE, 1.0), (WireDtype.BF16, 0.5),
                                                 (WireDtype.FP16, 0.5), (WireDtype.INT8, (16 + 4) / 64)])
@pytest.mark.parametrize("frame_limit", [None, 3000])
def test_wire_dtypes_restore_within_their_bound_and_move_their_fraction(prefill, monkeypatch, wire_dtype, fraction,
                                                                        frame_limit):
    server, leases, src = prefill
    if frame_limit:  # many frames, each whole rows, several per block
        monkeypatch.setattr("transport.tcp.server.CODEC_FRAME_KV_NBYTES", frame_limit)
        monkeypatch.setattr(wire, "MAX_DATA_PAYLOAD_BYTES", frame_limit)
    remote, local = [9, 2, 3, 4], [0, 7, 8, 11]
    leases.publish("req", remote, lease_s=30)
    result, dst = pull_as(server, "req", wire_dtype, local)
    assert result.nbytes == 4 * LAYERS * src[0][0].nbytes
    assert result.wire_nbytes == round(result.nbytes * fraction)
    assert server.served[0][1] == result.wire_nbytes  # the server counts what it sent
    for layer in range(LAYERS):
        x, back = src[layer][remote].reshape(-1, HEAD_SIZE), dst[layer][local].reshape(-1, HEAD_SIZE)
        if wire_dtype is WireDtype.NATIVE:
            np.testing.assert_array_equal(back, x)
        elif wire_dtype is WireDtype.INT8:
            peak = np.abs(x).max(axis=1, keepdims=True)
            assert (np.abs(back - x) <= peak / 254 + 4 * 2.0**-24 * peak).all()
        else:
            relative = 2.0**-8 if wire_dtype is WireDtype.BF16 else 2.0**-11
            assert (np.abs(back - x) <= relative * np.abs(x) + 2.0**-25).all()
        assert not dst[layer][[b for b in range(BLOCKS) if b not in local]].any()
    assert leases.drain_finished() == ({"req"}, set())


@pytest.mark.parametrize("fault,error", [("corrupt", wire.ChecksumError), ("truncate", wire.TruncatedError)])
def test_faults_in_converted_transfers_are_detected(prefill, fault, error):
    server, leases, _ = prefill
    server.fault_file.write_text(fault)
    leases.publish("req-f", [1, 2], lease_s=30)
    with pytest.raises(error):
        pull_as(server, "req-f", WireDtype.INT8, [0, 1])


def test_wire_dtype_that_does_not_apply_is_refused():
    """A store that does not say what its bytes are (doctor's loopback, the byte benchmark) serves native only."""
    leases = LeaseTable()
    untyped = RegionBlockStore.from_arrays(arrays(seed=1), layout_id=11)
    server = BlockServer(untyped, leases, "127.0.0.1", 0, transfer_timeout_s=5.0)
    server.start()
    try:
        leases.publish("req-u", [0], lease_s=30)
        with pytest.raises(wire.RemoteError, match="wire dtype int8 does not apply") as refused:
            pull_as(server, "req-u", WireDtype.INT8, [0])
        assert refused.value.code == ErrorCode.LAYOUT_MISMATCH
    finally:
        server.stop()


def test_client_needs_the_codec_its_pull_asks_for():
    store = store_of(arrays(seed=None))
    views, _ = store.write_views([0])
    with pytest.raises(ValueError, match="needs its codec"):
        pull_blocks("127.0.0.1", 1, "r", PullRequest(0, 1, store.block_nbytes, 11, WireDtype.INT8), views)


# --- versions ---------------------------------------------------------------------------------------------

V3_PULL = struct.Struct("!IIQI")  # a version-3 PULL: no wire dtype


def _v3_frame(frame_type: FrameType, request_id: str, payload: bytes) -> bytes:
    rid = request_id.encode()
    return wire.encode_header(frame_type, rid, len(payload), wire.checksum(rid, (payload,)), version=3) + payload


def test_old_decode_node_gets_an_error_it_can_read_naming_both_versions(prefill):
    """A version-3 decode node pulling from this prefill node: an ERROR frame in version 3, which it parses
    (same header and CRC-32C), saying which versions the two speak; nothing is sent."""
    server, leases, _ = prefill
    leases.publish("req-old", [0], lease_s=30)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(_v3_frame(FrameType.PULL, "req-old", V3_PULL.pack(0, 1, 4096, 11)))
        raw = sock.recv(wire.HEADER.size, socket.MSG_WAITALL)
        magic, version, kind, rid_nbytes, crc, payload_nbytes = wire.HEADER.unpack(raw)
        rest = sock.recv(rid_nbytes + payload_nbytes, socket.MSG_WAITALL)
    assert (magic, version, kind) == (wire.MAGIC, 3, FrameType.ERROR)
    payload = rest[rid_nbytes:]
    assert wire.checksum(rest[:rid_nbytes], (payload,)) == crc
    error = wire.decode_error(payload)
    assert error.code == ErrorCode.BAD_FRAME
    assert "version 4" in error.message and "version 3" in error.message, error.message
    assert server.served == [] and leases.pending() == 1


def test_new_decode_node_refuses_an_old_prefill_node_naming_both_versions():
    """A version-3 prefill node answers our PULL with its own ERROR (in version 3): the pull fails with a
    ProtocolError naming both versions, and the KV memory is never written."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def old_prefill() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)
            message = b"\x00\x05unsupported wire version 4 (this side speaks 3)"
            conn.sendall(_v3_frame(FrameType.ERROR, "req-new", message))

    import threading

    thread = threading.Thread(target=old_prefill, daemon=True)
    thread.start()
    dst = arrays(seed=None)
    store = store_of(dst)
    views, _ = store.write_views([0])
    try:
        with pytest.raises(wire.ProtocolError, match="peer speaks TCP KV wire version 3, this side speaks 4"):
            pull_blocks("127.0.0.1", port, "req-new", PullRequest(0, 1, store.block_nbytes, 11), views,
                        transfer_timeout_s=5.0)
    finally:
        thread.join(timeout=5)
        listener.close()
    assert not any(layer.any() for layer in dst)


def test_version_is_in_every_header_and_pull_carries_the_wire_dtype():
    pull = PullRequest(1, 2, 4096, 9, WireDtype.INT8)
    assert PullRequest.decode(pull.encode()) == pull
    frame = wire.encode_pull("r", pull, None)
    assert frame[4] == wire.VERSION == 4
    with pytest.raises(wire.ProtocolError, match="unknown wire dtype 9"):
        PullRequest.decode(pull.encode()[:-1] + bytes([9]))
    with pytest.raises(wire.VersionMismatchError, match="version 3, this side speaks 4") as mismatch:
        wire.decode_header(_v3_frame(FrameType.RELEASE, "r", b"")[:wire.HEADER.size])
    assert mismatch.value.peer_version == 3
