"""One tier entry: a fixed header and one KV block's raw bytes, checked on every read. No pickle, no torch.

    offset  size  field (big-endian)
    0       4     magic b"DKVB"
    4       1     version (1)
    5       1     block hash length in bytes (1..32; vLLM's sha256 hashes: 32)
    6       2     zero
    8       4     layout id (CRC-32 of the KV layout: layer shapes without the block count, dtype)
    12      4     block size in tokens
    16      32    block hash (vLLM's chained hash of the block's tokens), zero-padded
    48      8     payload length in bytes
    56      4     CRC-32C of bytes 0..55 and the payload
    60      ...   payload: the block's bytes, layer by layer (the `BlockStore` order of `transport.tcp.blocks`)

A reader states what it expects (layout, block size, hash, payload length) and gets the payload or an
`EntryError` saying which check failed: a truncated or padded entry fails the length check, a flipped bit
the checksum, an entry of another model or layout the layout or hash check.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import crc32c

MAGIC = b"DKVB"
VERSION = 1
MAX_HASH_NBYTES = 32
_HEADER = struct.Struct(">4sBBxxII32sQI")
HEADER_NBYTES = _HEADER.size  # 60
_CRC_OFFSET = HEADER_NBYTES - 4


class EntryError(ValueError):
    """An entry failed a check; `check` is one of magic, version, layout, block_size, hash, length, checksum."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check = check


@dataclass(frozen=True)
class EntryLayout:
    """What an entry must be to be loaded here: the KV layout, the block size in tokens, the payload length."""

    layout_id: int
    block_size: int
    payload_nbytes: int


def allocate(layout: EntryLayout, block_hash: bytes) -> bytearray:
    """An unsealed entry: the header (without its checksum) and `payload_nbytes` bytes to fill
    (`payload(entry)`), then `seal`."""
    if not 0 < len(block_hash) <= MAX_HASH_NBYTES:
        raise ValueError(f"a block hash of {len(block_hash)} bytes (1..{MAX_HASH_NBYTES})")
    entry = bytearray(HEADER_NBYTES + layout.payload_nbytes)
    _HEADER.pack_into(entry, 0, MAGIC, VERSION, len(block_hash), layout.layout_id, layout.block_size,
                      block_hash, layout.payload_nbytes, 0)
    return entry


def payload(entry: bytearray) -> memoryview:
    """The writable payload of an allocated entry."""
    return memoryview(entry)[HEADER_NBYTES:]


def seal(entry: bytearray) -> bytearray:
    """Write the checksum (header fields and payload) into the entry; return it."""
    view = memoryview(entry)
    crc = crc32c.crc32c(view[HEADER_NBYTES:], crc32c.crc32c(view[:_CRC_OFFSET]))
    struct.pack_into(">I", entry, _CRC_OFFSET, crc)
    return entry


def pack(layout: EntryLayout, block_hash: bytes, data: bytes | memoryview) -> bytearray:
    """A sealed entry holding `data` (tests and tools; the worker fills `payload` in place)."""
    entry = allocate(layout, block_hash)
    payload(entry)[:] = data
    return seal(entry)


def unpack(data: bytes | bytearray | memoryview, layout: EntryLayout, block_hash: bytes) -> memoryview:
    """The payload of `data` if it is the entry for `block_hash` in `layout`; EntryError otherwise."""
    view = memoryview(data)
    if len(view) < HEADER_NBYTES:
        raise EntryError("length", f"{len(view)} bytes: shorter than the {HEADER_NBYTES}-byte header")
    magic, version, hash_nbytes, layout_id, block_size, stored_hash, payload_nbytes, crc = _HEADER.unpack_from(view)
    if magic != MAGIC:
        raise EntryError("magic", f"magic {magic!r}, not {MAGIC!r}")
    if version != VERSION:
        raise EntryError("version", f"entry version {version}, this reader knows {VERSION}")
    if layout_id != layout.layout_id:
        raise EntryError("layout", f"layout {layout_id:#010x}, this node's is {layout.layout_id:#010x}")
    if block_size != layout.block_size:
        raise EntryError("block_size", f"{block_size}-token blocks, this node's are {layout.block_size}")
    if stored_hash[:hash_nbytes] != block_hash or hash_nbytes != len(block_hash):
        raise EntryError("hash", "the entry holds another block's hash")
    body = view[HEADER_NBYTES:]
    if payload_nbytes != layout.payload_nbytes or len(body) != payload_nbytes:
        raise EntryError("length", f"payload of {len(body)} bytes (header says {payload_nbytes}), "
                                   f"a block here is {layout.payload_nbytes}")
    if crc32c.crc32c(body, crc32c.crc32c(view[:_CRC_OFFSET])) != crc:
        raise EntryError("checksum", "CRC-32C mismatch: the entry is corrupted")
    return body
