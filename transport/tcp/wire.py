"""Wire format of the TCP KV transport: length-prefixed binary frames with a CRC-32C, no pickle.

Every frame is a fixed 20-byte header, the request id (UTF-8) and a payload:

    magic "DKVT" | version u8 | frame type u8 | request id bytes u16 | crc32c u32 | payload bytes u64

all big-endian. The CRC-32C (Castagnoli; the `crc32c` package, SSE4.2/ARMv8 instructions, about 12 GB/s
with the GIL released, three times zlib's CRC-32) covers the request id and the payload. One exchange,
one connection:

    decode -> prefill   PULL     payload: first block u32 | num blocks u32 | bytes per block u64 | layout id u32
                                 | wire dtype u8 | proof (0 or 32 bytes)
    prefill -> decode   DATA...  the blocks' KV, layer by layer, block by block, in the wire dtype asked for
                                 (`transport.tcp.wire_dtype`: 0 native = the raw KV bytes; 1 bf16, 2 fp16,
                                 3 int8 = each frame whole rows converted by `transport.tcp.codec`), cut into
                                 frames of at most MAX_DATA_PAYLOAD_BYTES that add up to exactly the bytes
                                 asked for (each frame checked on its own, so checking overlaps sending; the
                                 CRC-32C covers the bytes sent, i.e. the converted ones)
                        or ERROR payload: code u16 | UTF-8 message
    decode -> prefill   RELEASE  payload: proof (0 or 32 bytes); the decode side is done with the blocks: free them
    prefill -> decode   RELEASED (empty)

The proof is empty without a cluster token; with one, it is the HMAC-SHA256 of the frame type, the request id
and (PULL) the fields before it, keyed by the token (`transport.tcp.auth`). A prefill node that has a token
answers a PULL or RELEASE without a valid proof with ERROR `UNAUTHORIZED`, before it looks the request up.

Control frames (PULL, RELEASE, RELEASED, ERROR) carry at most MAX_CONTROL_PAYLOAD_BYTES. A frame over its
limit, or DATA beyond what was asked for, is refused, never read.

Versions: a frame of another version is refused with a message naming both (`VersionMismatchError`). A
prefill node answers a decode node of an older version whose header and checksum it shares
(`ERROR_COMPATIBLE_VERSIONS`) with an ERROR frame in that version, so the old node logs why.
"""

from __future__ import annotations

import enum
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import crc32c

from transport.tcp import auth
from transport.tcp.errors import (  # noqa: F401  (re-exported: the wire's failures)
    ChecksumError,
    ErrorCode,
    FrameTooLargeError,
    KvTransferError,
    PeerUnreachableError,
    ProtocolError,
    RemoteError,
    TransferTimeoutError,
    TruncatedError,
)
from transport.tcp.stream import recv_exact, recv_into_buffers
from transport.tcp.wire_dtype import WireDtype

MAGIC = b"DKVT"
VERSION = 4  # 1 used zlib's CRC-32; 2 had no proof in PULL and RELEASE; 3 had no wire dtype in PULL
ERROR_COMPATIBLE_VERSIONS = (2, 3)  # same header and CRC-32C: they can read an ERROR frame of their version
HEADER = struct.Struct("!4sBBHIQ")
PULL_PAYLOAD = struct.Struct("!IIQIB")
ERROR_CODE = struct.Struct("!H")
MAX_REQUEST_ID_BYTES = 1024
MAX_CONTROL_PAYLOAD_BYTES = 4096
MAX_DATA_PAYLOAD_BYTES = 4 * 2**20
MAX_ERROR_MESSAGE_BYTES = 1024


class FrameType(enum.IntEnum):
    PULL = 1
    DATA = 2
    RELEASE = 3
    RELEASED = 4
    ERROR = 5


@dataclass(frozen=True)
class FrameHeader:
    frame_type: FrameType
    request_id_nbytes: int
    crc32: int
    payload_nbytes: int


@dataclass(frozen=True)
class PullRequest:
    """What the decode side asks for: `num_blocks` of the published blocks, starting at `first_block`."""

    first_block: int
    num_blocks: int
    block_nbytes: int  # bytes of one block, all layers, in the KV cache (not on the wire)
    layout_id: int  # CRC-32 of the per-block layout (layer shapes and dtype), both sides must agree
    wire_dtype: WireDtype = WireDtype.NATIVE  # what the DATA frames carry (`transport.tcp.wire_dtype`)

    @property
    def payload_nbytes(self) -> int:
        """KV bytes the pull restores (the wire may carry fewer)."""
        return self.num_blocks * self.block_nbytes

    def encode(self) -> bytes:
        return PULL_PAYLOAD.pack(self.first_block, self.num_blocks, self.block_nbytes, self.layout_id,
                                 int(self.wire_dtype))

    @classmethod
    def decode(cls, payload: bytes) -> PullRequest:
        if len(payload) != PULL_PAYLOAD.size:
            raise ProtocolError(f"PULL payload has {len(payload)} bytes, expected {PULL_PAYLOAD.size}")
        *fields, wire_code = PULL_PAYLOAD.unpack(payload)
        try:
            wire_dtype = WireDtype(wire_code)
        except ValueError:
            raise ProtocolError(f"PULL asks for unknown wire dtype {wire_code}") from None
        return cls(*fields, wire_dtype=wire_dtype)


class VersionMismatchError(ProtocolError):
    """A frame of another wire version; `peer_version` is the version it carried."""

    def __init__(self, peer_version: int) -> None:
        super().__init__(f"the peer speaks TCP KV wire version {peer_version}, this side speaks {VERSION} "
                         "(run the same disagg release on both nodes)")
        self.peer_version = peer_version


def encode_pull(request_id: str, pull: PullRequest, token: bytes | None) -> bytes:
    """A whole PULL frame, with the token's proof (none without a token)."""
    fields = pull.encode()
    return encode_frame(FrameType.PULL, request_id, fields + auth.proof(token, FrameType.PULL, request_id.encode(),
                                                                        fields))


def encode_release(request_id: str, token: bytes | None) -> bytes:
    """A whole RELEASE frame, with the token's proof (none without a token)."""
    return encode_frame(FrameType.RELEASE, request_id, auth.proof(token, FrameType.RELEASE, request_id.encode()))


def split_pull(payload: bytes) -> tuple[PullRequest, bytes]:
    """A PULL payload's request and its proof (empty or `auth.PROOF_NBYTES` bytes)."""
    if len(payload) not in (PULL_PAYLOAD.size, PULL_PAYLOAD.size + auth.PROOF_NBYTES):
        raise ProtocolError(f"PULL payload has {len(payload)} bytes, expected {PULL_PAYLOAD.size} "
                            f"or {PULL_PAYLOAD.size + auth.PROOF_NBYTES}")
    return PullRequest.decode(payload[:PULL_PAYLOAD.size]), payload[PULL_PAYLOAD.size:]


class ByteCursor:
    """Hands out consecutive slices of a list of memoryviews (the blocks, in wire order)."""

    def __init__(self, views: Sequence[memoryview]) -> None:
        self._views = list(views)
        self._index = 0
        self._offset = 0
        self.remaining = sum(len(v) for v in self._views)

    def take(self, nbytes: int) -> list[memoryview]:
        if nbytes > self.remaining:
            raise ValueError(f"{nbytes} bytes asked for, {self.remaining} left")
        slices = []
        while nbytes:
            view = self._views[self._index]
            piece = view[self._offset:self._offset + nbytes]
            slices.append(piece)
            nbytes -= len(piece)
            self.remaining -= len(piece)
            self._offset += len(piece)
            if self._offset == len(view):
                self._index, self._offset = self._index + 1, 0
        return slices


def checksum(request_id: bytes, chunks: Iterable[memoryview | bytes] = ()) -> int:
    crc = crc32c.crc32c(request_id)
    for chunk in chunks:
        crc = crc32c.crc32c(chunk, crc)
    return crc


def encode_header(frame_type: FrameType, request_id: bytes, payload_nbytes: int, crc32: int,
                  version: int = VERSION) -> bytes:
    if len(request_id) > MAX_REQUEST_ID_BYTES:
        raise ProtocolError(f"request id of {len(request_id)} bytes over {MAX_REQUEST_ID_BYTES}")
    return HEADER.pack(MAGIC, version, int(frame_type), len(request_id), crc32, payload_nbytes) + request_id


def encode_frame(frame_type: FrameType, request_id: str, payload: bytes = b"", version: int = VERSION) -> bytes:
    """A whole control frame: header, request id, payload."""
    rid = request_id.encode()
    return encode_header(frame_type, rid, len(payload), checksum(rid, (payload,)), version) + payload


def encode_error(request_id: str, code: ErrorCode, message: str, version: int = VERSION) -> bytes:
    """An ERROR frame; `version` other than ours only for a peer in `ERROR_COMPATIBLE_VERSIONS`."""
    text = message.encode()[:MAX_ERROR_MESSAGE_BYTES]
    return encode_frame(FrameType.ERROR, request_id, ERROR_CODE.pack(int(code)) + text, version)


def decode_error(payload: bytes) -> RemoteError:
    if len(payload) < ERROR_CODE.size:
        return RemoteError(int(ErrorCode.BAD_FRAME), "short ERROR frame")
    (code,) = ERROR_CODE.unpack_from(payload)
    return RemoteError(code, payload[ERROR_CODE.size:].decode(errors="replace"))


def decode_header(raw: bytes) -> FrameHeader:
    magic, version, frame_type, rid_nbytes, crc32, payload_nbytes = HEADER.unpack(raw)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}")
    if version != VERSION:
        raise VersionMismatchError(version)
    try:
        kind = FrameType(frame_type)
    except ValueError:
        raise ProtocolError(f"unknown frame type {frame_type}") from None
    if rid_nbytes > MAX_REQUEST_ID_BYTES:
        raise FrameTooLargeError(f"request id of {rid_nbytes} bytes over {MAX_REQUEST_ID_BYTES}")
    return FrameHeader(kind, rid_nbytes, crc32, payload_nbytes)


def header_nbytes(request_id: bytes) -> int:
    """Bytes of a frame's header and request id: what to read before any frame about this request."""
    return HEADER.size + len(request_id)


def parse_header(raw: bytes | bytearray | memoryview) -> tuple[FrameHeader, bytes]:
    """A header followed by its request id, read in one piece (see `header_nbytes`)."""
    header = decode_header(bytes(raw[:HEADER.size]))
    rid = bytes(raw[HEADER.size:])
    if len(rid) != header.request_id_nbytes:
        raise ProtocolError(f"{header.frame_type.name} frame for a request id of {header.request_id_nbytes} "
                            f"bytes, expected {len(rid)}")
    return header, rid


def read_header(sock: socket.socket, deadline_s: float) -> tuple[FrameHeader, bytes] | None:
    """Read one frame's header and request id; None if the peer closed cleanly before a new frame."""
    raw = bytearray(HEADER.size)
    if recv_into_buffers(sock, [memoryview(raw)], deadline_s, eof_ok=True) == 0:
        return None
    header = decode_header(bytes(raw))
    return header, recv_exact(sock, header.request_id_nbytes, deadline_s)


def read_control_payload(sock: socket.socket, header: FrameHeader, request_id: bytes,
                         deadline_s: float) -> bytes:
    """Read and verify a control frame's payload; refuse one over `MAX_CONTROL_PAYLOAD_BYTES` unread."""
    if header.payload_nbytes > MAX_CONTROL_PAYLOAD_BYTES:
        raise FrameTooLargeError(f"{header.frame_type.name} frame announces {header.payload_nbytes} bytes, "
                                 f"limit {MAX_CONTROL_PAYLOAD_BYTES}")
    payload = recv_exact(sock, header.payload_nbytes, deadline_s)
    if checksum(request_id, (payload,)) != header.crc32:
        raise ChecksumError(f"{header.frame_type.name} frame failed its CRC-32C")
    return payload
