"""Decode side: pull a request's blocks from a prefill node's block server, and release them.

`pull_blocks` runs one exchange on one connection: PULL, then the DATA frames received straight into the
caller's memory (the KV cache, or a staging buffer), each frame's CRC-32C checked, then RELEASE so the
prefill node frees the blocks. With a `codec` (a wire dtype other than native, `transport.tcp.codec`), each
frame lands in one staging buffer, is checked, and is restored into the caller's memory while the kernel
receives the next. It returns only when every byte arrived intact; any other outcome raises a
`KvTransferError` and the caller must treat the memory as garbage. With a cluster `token`, both frames
carry its proof (`transport.tcp.auth`); a prefill node with another token refuses them (`RemoteError`
with code `UNAUTHORIZED`) and sends nothing.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from transport.tcp import stream, wire
from transport.tcp.wire import FrameHeader, FrameType, PullRequest
from transport.tcp.wire_dtype import WireDtype

if TYPE_CHECKING:
    from transport.tcp.codec import Codec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PullResult:
    request_id: str
    num_blocks: int
    nbytes: int  # KV bytes restored
    seconds: float  # from opening the connection to the last byte checked (and restored)
    wire_nbytes: int = -1  # DATA payload bytes received (= nbytes for native); -1: not given

    def __post_init__(self) -> None:
        if self.wire_nbytes < 0:
            object.__setattr__(self, "wire_nbytes", self.nbytes)


def pull_blocks(host: str, port: int, request_id: str, pull: PullRequest, views: Sequence[memoryview], *,
                connect_timeout_s: float = 5.0, transfer_timeout_s: float = 30.0,
                token: bytes | None = None, codec: Codec | None = None) -> PullResult:
    """Pull `pull.num_blocks` published blocks of `request_id` into `views` (wire order), then release them.

    `codec` restores the wire dtype `pull.wire_dtype` asks for; it must be given exactly when that is not
    native (ValueError otherwise).
    """
    expected_nbytes = sum(len(v) for v in views)
    if expected_nbytes != pull.payload_nbytes:
        raise ValueError(f"{expected_nbytes} bytes of memory for a pull of {pull.payload_nbytes}")
    if (codec.wire if codec is not None else WireDtype.NATIVE) is not pull.wire_dtype:
        raise ValueError(f"a pull in wire dtype {pull.wire_dtype.label} needs its codec, got {codec}")
    started_s = time.perf_counter()
    deadline_s = time.monotonic() + transfer_timeout_s
    rid = request_id.encode()
    with _connect(host, port, connect_timeout_s) as sock:
        try:
            stream.send_buffers(sock, [wire.encode_pull(request_id, pull, token)], deadline_s)
            bad_frames, wire_nbytes = _receive_data(sock, rid, views, deadline_s, codec)
        except ConnectionError as exc:
            raise wire.TruncatedError(f"connection to {host}:{port} broke: {exc}") from None
        seconds = time.perf_counter() - started_s
        _release_quietly(sock, request_id, deadline_s, token)
    if bad_frames:
        raise wire.ChecksumError(f"KV of request {request_id}: {bad_frames} DATA frame(s) failed their CRC-32C")
    return PullResult(request_id, pull.num_blocks, expected_nbytes, seconds, wire_nbytes)


def release_blocks(host: str, port: int, request_id: str, *, connect_timeout_s: float = 5.0,
                   transfer_timeout_s: float = 30.0, token: bytes | None = None) -> None:
    """Tell the prefill node to free the request's blocks without pulling them (abort, local cache hit)."""
    deadline_s = time.monotonic() + transfer_timeout_s
    with _connect(host, port, connect_timeout_s) as sock:
        try:
            _release(sock, request_id, deadline_s, token)
        except ConnectionError as exc:
            raise wire.TruncatedError(f"connection to {host}:{port} broke: {exc}") from None


def _receive_data(sock: socket.socket, rid: bytes, views: Sequence[memoryview], deadline_s: float,
                  codec: Codec | None = None) -> tuple[int, int]:
    """Receive DATA frames into `views` (through `codec` when given) until they are full; returns how many
    frames failed their CRC-32C and the payload bytes received.

    Each frame's payload and the next frame's header arrive in one system call. A bad frame does not stop
    the stream (nor is it restored), so the connection stays usable for RELEASE.
    """
    cursor = wire.ByteCursor(views)
    header = _expect(sock, rid, FrameType.DATA, deadline_s)
    staging = memoryview(bytearray(0 if codec is None else min(codec.wire_nbytes(cursor.remaining),
                                                               wire.MAX_DATA_PAYLOAD_BYTES)))
    bad_frames = wire_nbytes = 0
    while True:
        remaining_wire = cursor.remaining if codec is None else codec.wire_nbytes(cursor.remaining)
        limit = min(remaining_wire, wire.MAX_DATA_PAYLOAD_BYTES)
        if header.payload_nbytes > limit:
            raise wire.FrameTooLargeError(f"DATA frame announces {header.payload_nbytes} bytes, "
                                          f"{remaining_wire} remain to be received, frame limit "
                                          f"{wire.MAX_DATA_PAYLOAD_BYTES}")
        if header.payload_nbytes == 0:
            raise wire.ProtocolError("empty DATA frame")
        kv_nbytes = header.payload_nbytes if codec is None else _kv_nbytes(codec, header.payload_nbytes)
        pieces = cursor.take(kv_nbytes)
        payload = pieces if codec is None else [staging[:header.payload_nbytes]]
        next_header = bytearray(wire.header_nbytes(rid) if cursor.remaining else 0)
        stream.recv_into_buffers(sock, [*payload, memoryview(next_header)], deadline_s)
        wire_nbytes += header.payload_nbytes
        if wire.checksum(rid, payload) != header.crc32:
            bad_frames += 1
        elif codec is not None:
            codec.decode(payload[0], pieces)
        if not cursor.remaining:
            return bad_frames, wire_nbytes
        header, next_rid = wire.parse_header(next_header)
        if header.frame_type is not FrameType.DATA or next_rid != rid:
            raise wire.ProtocolError(f"expected DATA for {rid!r}, got {header.frame_type.name} for {next_rid!r}")


def _kv_nbytes(codec: Codec, payload_nbytes: int) -> int:
    try:
        return codec.kv_nbytes(payload_nbytes)
    except ValueError as exc:
        raise wire.ProtocolError(f"DATA frame: {exc}") from None


def _expect(sock: socket.socket, rid: bytes, frame_type: FrameType, deadline_s: float) -> FrameHeader:
    """Read the next frame's header: `frame_type` for this request, else raise (RemoteError for ERROR)."""
    got = wire.read_header(sock, deadline_s)
    if got is None:
        raise wire.TruncatedError(f"peer closed the connection instead of sending {frame_type.name}")
    header, got_rid = got
    if header.frame_type is FrameType.ERROR:
        raise wire.decode_error(wire.read_control_payload(sock, header, got_rid, deadline_s))
    if header.frame_type is not frame_type:
        raise wire.ProtocolError(f"expected {frame_type.name}, got {header.frame_type.name}")
    if got_rid != rid:
        raise wire.ProtocolError(f"{frame_type.name} for request {got_rid!r}, expected {rid!r}")
    return header


def _release(sock: socket.socket, request_id: str, deadline_s: float, token: bytes | None) -> None:
    stream.send_buffers(sock, [wire.encode_release(request_id, token)], deadline_s)
    rid = request_id.encode()
    header = _expect(sock, rid, FrameType.RELEASED, deadline_s)
    wire.read_control_payload(sock, header, rid, deadline_s)


def _release_quietly(sock: socket.socket, request_id: str, deadline_s: float, token: bytes | None) -> None:
    """Release after a pull; a failure only delays the free until the lease runs out."""
    try:
        _release(sock, request_id, deadline_s, token)
    except (wire.KvTransferError, OSError) as exc:
        logger.warning("release of %s failed (its lease will free it): %s", request_id, exc)


def _connect(host: str, port: int, connect_timeout_s: float) -> socket.socket:
    try:
        sock = socket.create_connection((host, port), timeout=connect_timeout_s)
    except OSError as exc:
        raise wire.PeerUnreachableError(f"cannot connect to {host}:{port}: {exc}") from None
    stream.make_blocking(sock)
    return sock
