"""The TCP KV transport over real sockets on 127.0.0.1: block server, lease table and pull client."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from transport.tcp import wire
from transport.tcp.blocks import RegionBlockStore
from transport.tcp.client import pull_blocks, release_blocks
from transport.tcp.lease import LeaseTable, UnknownRequestError
from transport.tcp.server import BlockServer
from transport.tcp.wire import ErrorCode, FrameType, PullRequest

pytestmark = pytest.mark.timeout(20)

LAYERS, BLOCKS, BLOCK_SHAPE = 3, 10, (2, 16, 8)  # per layer: [blocks, heads, tokens, 2 * head size]


def make_arrays(seed: int | None) -> list[np.ndarray]:
    shape = (BLOCKS, *BLOCK_SHAPE)
    if seed is None:
        return [np.zeros(shape, dtype=np.float32) for _ in range(LAYERS)]
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape, dtype=np.float32) for _ in range(LAYERS)]


@pytest.fixture
def prefill():
    """A block server over random KV arrays; yields (server, leases, arrays)."""
    arrays = make_arrays(seed=1)
    leases = LeaseTable()
    served: list[tuple[str, int, float]] = []
    server = BlockServer(RegionBlockStore.from_arrays(arrays, layout_id=7), leases, "127.0.0.1", 0,
                         transfer_timeout_s=5.0, publish_wait_s=0.2,
                         on_served=lambda *args: served.append(args))
    server.start()
    server.served = served
    yield server, leases, arrays
    server.stop()


def decode_store():
    arrays = make_arrays(seed=None)
    return RegionBlockStore.from_arrays(arrays, layout_id=7), arrays


def pull(server, request_id, store, local_blocks, first_block=0, **kwargs):
    pull_request = PullRequest(first_block, len(local_blocks), store.block_nbytes, store.layout_id)
    views, commit = store.write_views(local_blocks)
    result = pull_blocks("127.0.0.1", server.port, request_id, pull_request, views, connect_timeout_s=2.0,
                         transfer_timeout_s=kwargs.get("transfer_timeout_s", 5.0))
    commit()
    return result


def test_round_trip_all_layers_into_other_blocks(prefill):
    server, leases, src = prefill
    leases.publish("req-1", [7, 2, 5], lease_s=30)
    store, dst = decode_store()
    result = pull(server, "req-1", store, [1, 4, 6])
    for layer in range(LAYERS):
        for remote, local in zip([7, 2, 5], [1, 4, 6]):
            np.testing.assert_array_equal(dst[layer][local], src[layer][remote])
        untouched = [b for b in range(BLOCKS) if b not in (1, 4, 6)]
        assert not dst[layer][untouched].any()
    assert result.nbytes == 3 * store.block_nbytes == 3 * LAYERS * src[0][0].nbytes
    assert server.served and server.served[0][:2] == ("req-1", result.nbytes)
    assert leases.drain_finished() == ({"req-1"}, set())  # the pull released the blocks


def test_transfer_cut_into_many_data_frames(prefill, monkeypatch):
    server, leases, src = prefill
    monkeypatch.setattr(wire, "MAX_DATA_PAYLOAD_BYTES", 1000)  # blocks are 1024 B per layer
    leases.publish("req-m", [0, 9], lease_s=30)
    store, dst = decode_store()
    result = pull(server, "req-m", store, [3, 4])
    assert result.nbytes == 2 * store.block_nbytes > 6 * 1000
    for layer in range(LAYERS):
        np.testing.assert_array_equal(dst[layer][[3, 4]], src[layer][[0, 9]])


def test_runs_of_adjacent_blocks_on_either_side(prefill):
    server, leases, src = prefill
    leases.publish("req-r", [2, 3, 4, 8], lease_s=30)
    store, dst = decode_store()
    assert len(store.read_views([5, 6, 7, 1])) == 2 * LAYERS  # adjacent blocks travel as one piece
    pull(server, "req-r", store, [5, 6, 7, 1])
    for layer in range(LAYERS):
        np.testing.assert_array_equal(dst[layer][[5, 6, 7, 1]], src[layer][[2, 3, 4, 8]])


def test_pull_of_tail_blocks_for_a_local_prefix_hit(prefill):
    server, leases, src = prefill
    leases.publish("req-2", [9, 8, 3], lease_s=30)
    store, dst = decode_store()
    pull(server, "req-2", store, [0, 5], first_block=1)
    np.testing.assert_array_equal(dst[2][0], src[2][8])
    np.testing.assert_array_equal(dst[2][5], src[2][3])


def test_released_request_cannot_be_pulled_again(prefill):
    server, leases, _ = prefill
    leases.publish("req-3", [1], lease_s=30)
    store, _ = decode_store()
    pull(server, "req-3", store, [0])
    with pytest.raises(wire.RemoteError) as refused:
        pull(server, "req-3", store, [0])
    assert refused.value.code == ErrorCode.UNKNOWN_REQUEST


def test_unknown_request_refused(prefill):
    server, _, _ = prefill
    store, dst = decode_store()
    with pytest.raises(wire.RemoteError) as refused:
        pull(server, "never-published", store, [0, 1])
    assert refused.value.code == ErrorCode.UNKNOWN_REQUEST
    assert not dst[0].any()


def test_pull_waits_briefly_for_a_request_published_just_after(prefill):
    server, leases, src = prefill
    timer = threading.Timer(0.05, leases.publish, args=("late", [4], 30))
    timer.start()
    store, dst = decode_store()
    pull(server, "late", store, [3])
    np.testing.assert_array_equal(dst[1][3], src[1][4])


@pytest.mark.parametrize("first_block, local_blocks", [(0, [0, 1, 2]), (2, [0])])
def test_blocks_outside_the_published_range_refused(prefill, first_block, local_blocks):
    server, leases, _ = prefill
    leases.publish("req-4", [1, 2], lease_s=30)
    store, _ = decode_store()
    with pytest.raises(wire.RemoteError) as refused:
        pull(server, "req-4", store, local_blocks, first_block=first_block)
    assert refused.value.code == ErrorCode.BAD_RANGE


def test_layout_mismatch_refused(prefill):
    server, leases, _ = prefill
    leases.publish("req-5", [1], lease_s=30)
    other = RegionBlockStore.from_arrays(make_arrays(seed=None), layout_id=8)
    with pytest.raises(wire.RemoteError) as refused:
        pull(server, "req-5", other, [0])
    assert refused.value.code == ErrorCode.LAYOUT_MISMATCH


def test_oversize_frame_refused_with_error_frame(prefill):
    server, leases, _ = prefill
    leases.publish("req-6", [1], lease_s=30)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(wire.encode_header(FrameType.PULL, b"req-6", 1 << 30, 0))
        header, rid = wire.read_header(sock, time.monotonic() + 5)
        assert header.frame_type is FrameType.ERROR
        error = wire.decode_error(wire.read_control_payload(sock, header, rid, time.monotonic() + 5))
        assert error.code == ErrorCode.FRAME_TOO_LARGE
        assert sock.recv(1) == b""  # and the connection is closed
    assert leases.pending() == 1  # the blocks stay published for a proper pull


def test_garbage_refused(prefill):
    server, _, _ = prefill
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        header, rid = wire.read_header(sock, time.monotonic() + 5)
        error = wire.decode_error(wire.read_control_payload(sock, header, rid, time.monotonic() + 5))
        assert error.code == ErrorCode.BAD_FRAME


def test_lone_release_frees_and_unknown_release_refused(prefill):
    server, leases, _ = prefill
    leases.publish("req-7", [1, 2], lease_s=30)
    release_blocks("127.0.0.1", server.port, "req-7")
    assert leases.drain_finished() == ({"req-7"}, set())
    with pytest.raises(wire.RemoteError):
        release_blocks("127.0.0.1", server.port, "req-7")


def test_a_release_waits_briefly_for_a_request_published_just_after(prefill):
    """The router may ask for a release (through the decode node) before the prefill worker has published the
    blocks: the release must still free them, not leave them to the lease."""
    server, leases, _ = prefill
    timer = threading.Timer(0.05, leases.publish, args=("late-release", [4], 30))
    timer.start()
    release_blocks("127.0.0.1", server.port, "late-release")
    assert leases.drain_finished() == ({"late-release"}, set())


def test_lease_expiry_frees_blocks_and_refuses_late_pulls(prefill):
    server, leases, _ = prefill
    leases.publish("req-8", [1], lease_s=0.1)
    time.sleep(0.2)
    assert leases.drain_finished() == (set(), {"req-8"})
    store, _ = decode_store()
    with pytest.raises(wire.RemoteError) as refused:
        pull(server, "req-8", store, [0])
    assert refused.value.code == ErrorCode.UNKNOWN_REQUEST
    assert leases.drain_finished() == (set(), set())  # reported once


def test_lease_does_not_expire_during_a_transfer():
    leases = LeaseTable()
    leases.publish("r", [3], lease_s=0.05)
    assert leases.checkout("r") == [3]
    time.sleep(0.1)
    assert leases.drain_finished() == (set(), set())
    leases.checkin("r")
    assert leases.drain_finished() == (set(), {"r"})
    with pytest.raises(UnknownRequestError, match="expired"):
        leases.checkout("r", wait_s=30.0)  # gone: refused at once (the test timeout would catch a wait)


def test_block_ids_outside_the_cache_refused():
    store, _ = decode_store()
    with pytest.raises(ValueError):
        store.read_views([0, BLOCKS])
    with pytest.raises(ValueError):
        store.write_views([-1])


def test_unreachable_peer():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        store, _ = decode_store()
        views, _ = store.write_views([0])
        with pytest.raises(wire.PeerUnreachableError):
            pull_blocks("127.0.0.1", port, "r", PullRequest(0, 1, store.block_nbytes, 7), views,
                        connect_timeout_s=1.0)


# ---- a misbehaving prefill node --------------------------------------------------------------------------

class FakePrefill:
    """Answers one PULL with a DATA frame it tampers with: `mode` is corrupt | truncate | oversize."""

    def __init__(self, mode: str, payload: bytes) -> None:
        self.mode, self.payload = mode, payload
        self.released = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            header, rid = wire.read_header(conn, time.monotonic() + 5)
            wire.read_control_payload(conn, header, rid, time.monotonic() + 5)
            crc = wire.checksum(rid, [self.payload])
            body = self.payload
            if self.mode == "corrupt":
                body = bytes([body[0] ^ 0xFF]) + body[1:]
            if self.mode == "foreign-frame":  # a second DATA frame about another request
                half = len(body) // 2
                conn.sendall(wire.encode_header(FrameType.DATA, rid, half, wire.checksum(rid, [body[:half]])))
                conn.sendall(body[:half])
                other = rid[:-1] + b"?"
                conn.sendall(wire.encode_header(FrameType.DATA, other, len(body) - half,
                                                wire.checksum(other, [body[half:]])) + body[half:])
                return
            announced = len(body) + (8 if self.mode == "oversize" else 0)
            conn.sendall(wire.encode_header(FrameType.DATA, rid, announced, crc))
            if self.mode == "truncate":
                conn.sendall(body[: len(body) // 2])
                return
            conn.sendall(body)
            try:
                got = wire.read_header(conn, time.monotonic() + 5)
            except OSError:  # the client hung up on a frame it refused
                return
            if got and got[0].frame_type is FrameType.RELEASE:
                self.released.set()
                conn.sendall(wire.encode_frame(FrameType.RELEASED, got[1].decode()))

    def close(self) -> None:
        self.thread.join(timeout=5)
        self.listener.close()


@pytest.mark.parametrize("mode, error", [
    ("corrupt", wire.ChecksumError),
    ("truncate", wire.TruncatedError),
    ("oversize", wire.FrameTooLargeError),
    ("over-frame-limit", wire.FrameTooLargeError),
    ("foreign-frame", wire.ProtocolError),
])
def test_tampered_transfers_are_detected(mode, error, monkeypatch):
    if mode == "over-frame-limit":  # the frame fits what was asked for, but not the per-frame limit
        monkeypatch.setattr(wire, "MAX_DATA_PAYLOAD_BYTES", 1024)
    store, dst = decode_store()
    payload = np.random.default_rng(3).bytes(store.block_nbytes * 2)
    fake = FakePrefill(mode, payload)
    try:
        with pytest.raises(error):
            pull(fake, "req-x", store, [2, 3])
        if mode == "corrupt":
            assert fake.released.wait(5)  # the decode side still frees the prefill side's blocks
    finally:
        fake.close()


def test_intact_transfer_through_fake_passes():
    """Control for the tampering test: the same fake, untampered, delivers the bytes."""
    store, dst = decode_store()
    payload = np.random.default_rng(4).bytes(store.block_nbytes)
    fake = FakePrefill("intact", payload)
    try:
        pull(fake, "req-y", store, [9])
        assert fake.released.wait(5)
    finally:
        fake.close()
    assert b"".join(bytes(v) for v in store.read_views([9])) == payload


# ---- vLLM-shaped torch KV tensors (CPU) ------------------------------------------------------------------

def torch_kv(seed: int | None, staged: bool) -> dict:
    """KV tensors shaped like vLLM's CPU cache, one per layer: [blocks, kv heads, tokens, 2 * head size].

    `staged`: the same logical shape, but blocks not contiguous in memory (heads outermost).
    """
    torch = pytest.importorskip("torch")
    generator = torch.Generator().manual_seed(seed or 0)
    caches = {}
    for layer in range(LAYERS):
        if staged:
            base = torch.zeros(BLOCK_SHAPE[0], BLOCKS, *BLOCK_SHAPE[1:])
            tensor = base.permute(1, 0, 2, 3)
        else:
            tensor = torch.zeros(BLOCKS, *BLOCK_SHAPE)
        if seed is not None:
            tensor.copy_(torch.randn(tensor.shape, generator=generator))
        caches[f"model.layers.{layer}.self_attn.attn"] = tensor
    return caches


@pytest.mark.parametrize("src_staged, dst_staged", [(False, False), (False, True), (True, False)])
def test_torch_kv_round_trip(src_staged, dst_staged):
    from transport.tcp.kv_tensors import StagingBlockStore, build_block_store

    src, dst = torch_kv(seed=5, staged=src_staged), torch_kv(seed=None, staged=dst_staged)
    src_store, dst_store = build_block_store(src), build_block_store(dst)
    assert isinstance(src_store, StagingBlockStore) == src_staged
    assert isinstance(dst_store, StagingBlockStore) == dst_staged
    assert src_store.layout_id == dst_store.layout_id
    leases = LeaseTable()
    server = BlockServer(src_store, leases, "127.0.0.1", 0, publish_wait_s=0.1)
    server.start()
    try:
        leases.publish("req-t", [6, 0, 9], lease_s=30)
        pull(server, "req-t", dst_store, [1, 2, 3])
    finally:
        server.stop()
    for name in src:
        for remote, local in zip([6, 0, 9], [1, 2, 3]):
            assert dst[name][local].equal(src[name][remote])
        assert not dst[name][[0, 4, 5, 6, 7, 8, 9]].any()


def test_torch_layer_order_is_natural_and_shared_layers_once():
    from transport.tcp.kv_tensors import ordered_layers

    caches = torch_kv(seed=None, staged=False)
    caches = {name: caches[name] for name in reversed(list(caches))}
    caches["model.layers.10.self_attn.attn"] = caches["model.layers.2.self_attn.attn"]  # shares KV
    names = [name for name, _ in ordered_layers(caches)]
    assert names == [f"model.layers.{i}.self_attn.attn" for i in range(LAYERS)]


def test_torch_layout_differs_when_shapes_differ():
    from transport.tcp.kv_tensors import build_block_store

    caches = torch_kv(seed=None, staged=False)
    other = {name: t[:, :1].contiguous() for name, t in caches.items()}
    assert build_block_store(caches).layout_id != build_block_store(other).layout_id


@pytest.mark.gpu
@pytest.mark.parametrize("src_device, dst_device", [("cuda", "cpu"), ("cpu", "cuda")])
def test_cuda_kv_goes_through_pinned_staging(src_device, dst_device):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    from transport.tcp.kv_tensors import StagingBlockStore, build_block_store

    src = {name: t.to(src_device) for name, t in torch_kv(seed=7, staged=False).items()}
    dst = {name: t.to(dst_device) for name, t in torch_kv(seed=None, staged=False).items()}
    src_store, dst_store = build_block_store(src), build_block_store(dst)
    assert isinstance(src_store if src_device == "cuda" else dst_store, StagingBlockStore)
    leases = LeaseTable()
    server = BlockServer(src_store, leases, "127.0.0.1", 0, publish_wait_s=0.1)
    server.start()
    try:
        leases.publish("req-g", [4, 5], lease_s=30)
        pull(server, "req-g", dst_store, [8, 1])
    finally:
        server.stop()
    for name in src:
        assert dst[name][[8, 1]].cpu().equal(src[name][[4, 5]].cpu())
