"""The KV tier's entry format: header + raw block, round trip and every check (truncation, padding, bit flips
in header and payload, another layout, block size, hash, version)."""

from __future__ import annotations

import os
import struct

import pytest

from transport.kv_tier import entry as entries
from transport.kv_tier.entry import EntryError, EntryLayout

pytestmark = pytest.mark.timeout(30)
LAYOUT = EntryLayout(layout_id=0x1234ABCD, block_size=128, payload_nbytes=4096)
HASH = bytes(range(32))


def _entry(data: bytes | None = None) -> bytearray:
    return entries.pack(LAYOUT, HASH, data if data is not None else os.urandom(LAYOUT.payload_nbytes))


def _check(data, layout=LAYOUT, block_hash=HASH) -> str:
    with pytest.raises(EntryError) as caught:
        entries.unpack(data, layout, block_hash)
    return caught.value.check


def test_round_trip_returns_the_payload_bytes():
    data = os.urandom(LAYOUT.payload_nbytes)
    entry = entries.pack(LAYOUT, HASH, data)
    assert len(entry) == entries.HEADER_NBYTES + len(data) and entries.HEADER_NBYTES == 60
    assert entry[:4] == b"DKVB"
    assert bytes(entries.unpack(bytes(entry), LAYOUT, HASH)) == data


def test_filled_in_place_then_sealed_equals_packed():
    data = os.urandom(LAYOUT.payload_nbytes)
    entry = entries.allocate(LAYOUT, HASH)
    entries.payload(entry)[:] = data
    assert entries.seal(entry) == entries.pack(LAYOUT, HASH, data)


def test_an_unsealed_entry_fails_its_checksum():
    entry = entries.allocate(LAYOUT, HASH)
    assert _check(bytes(entry)) == "checksum"


@pytest.mark.parametrize("keep", [0, 10, entries.HEADER_NBYTES, entries.HEADER_NBYTES + 100, -1])
def test_a_truncated_entry_is_refused(keep):
    entry = _entry()
    assert _check(bytes(entry[:keep] if keep >= 0 else entry[:-1])) == "length"


def test_a_padded_entry_is_refused():
    assert _check(bytes(_entry()) + b"\0") == "length"


@pytest.mark.parametrize("offset", [entries.HEADER_NBYTES, entries.HEADER_NBYTES + 2047, -1])
def test_a_flipped_payload_bit_fails_the_checksum(offset):
    entry = _entry()
    entry[offset] ^= 0x10
    assert _check(bytes(entry)) == "checksum"


def test_a_changed_header_length_field_is_caught():
    entry = _entry()
    struct.pack_into(">Q", entry, 48, LAYOUT.payload_nbytes - 1)
    assert _check(bytes(entry)) == "length"


def test_a_flipped_padding_byte_in_the_header_fails_the_checksum():
    entry = _entry()
    entry[6] ^= 1  # the reserved zero bytes: no field check sees them, the CRC does
    assert _check(bytes(entry)) == "checksum"


@pytest.mark.parametrize("field, other, check", [
    ("layout_id", 0x1234ABCE, "layout"), ("block_size", 16, "block_size"), ("payload_nbytes", 8192, "length")])
def test_an_entry_of_another_layout_is_refused(field, other, check):
    layout = EntryLayout(**{**LAYOUT.__dict__, field: other})
    assert _check(bytes(_entry()), layout=layout) == check


def test_an_entry_of_another_block_is_refused():
    assert _check(bytes(_entry()), block_hash=bytes(32)) == "hash"
    assert _check(bytes(_entry()), block_hash=HASH[:16]) == "hash"


def test_magic_and_version():
    entry = _entry()
    entry[0:4] = b"XKVB"
    assert _check(bytes(entry)) == "magic"
    entry = _entry()
    entry[4] = 2
    assert _check(bytes(entry)) == "version"


def test_short_hashes_round_trip_and_bad_ones_are_rejected():
    short = b"\x01" * 16  # xxhash's 128-bit hashes
    data = os.urandom(LAYOUT.payload_nbytes)
    assert bytes(entries.unpack(entries.pack(LAYOUT, short, data), LAYOUT, short)) == data
    for bad in (b"", bytes(33)):
        with pytest.raises(ValueError):
            entries.allocate(LAYOUT, bad)
