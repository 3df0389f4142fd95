"""vLLM's prefix-cache block hashes, computed in the router (standard library only: no vllm, no cbor2).

A vLLM node started with `--prefix-caching-hash-algo sha256_cbor` names every full block of a prompt by a
hash chained from the first block (vllm/v1/core/kv_cache_utils.py, `hash_block_tokens`):

    NONE_HASH = sha256(cbor(seed))                 seed = $PYTHONHASHSEED, else "vllm-none-hash"
    h[i]      = sha256(cbor((h[i-1] or NONE_HASH, tuple(block i's token ids), extra_keys or None)))

with `cbor` = canonical CBOR (`cbor2.dumps(x, canonical=True)`: shortest integer heads). The only extra key
a plain-text request has is its `cache_salt`, in the first block (`("cache_salt", salt)`). KV events carry
the low 64 bits of each 32-byte hash as an int (`VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1`, vLLM's default),
which is what `block_hashes` returns. The same seed is on every node as long as none sets PYTHONHASHSEED.
Checked against vLLM's own hasher in tests/unit/test_prefix_block_hash.py (source: the issue-16 research,
/work/research/issue16.md §1.4).
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

DEFAULT_SEED = "vllm-none-hash"
_MASK_64 = (1 << 64) - 1


def _head(major: int, n: int) -> bytes:
    """A canonical CBOR head: major type and argument, the argument in the fewest bytes."""
    if n < 24:
        return bytes([(major << 5) | n])
    for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([(major << 5) | extra]) + n.to_bytes(size, "big")
    raise ValueError(f"{n} does not fit a CBOR head")


def cbor(obj: Any) -> bytes:
    """Canonical CBOR of the types a block-hash key holds: None, bool, int, bytes, str, tuple/list."""
    if obj is None:
        return b"\xf6"
    if isinstance(obj, bool):
        return b"\xf5" if obj else b"\xf4"
    if isinstance(obj, int):
        return _head(0, obj) if obj >= 0 else _head(1, -1 - obj)
    if isinstance(obj, (bytes, bytearray)):
        return _head(2, len(obj)) + bytes(obj)
    if isinstance(obj, str):
        data = obj.encode("utf-8")
        return _head(3, len(data)) + data
    if isinstance(obj, (list, tuple)):
        return _head(4, len(obj)) + b"".join(cbor(item) for item in obj)
    raise TypeError(f"{type(obj).__name__} cannot be part of a block-hash key")


def none_hash(seed: str = DEFAULT_SEED) -> bytes:
    """The parent of a prompt's first block (32 bytes)."""
    return hashlib.sha256(cbor(seed)).digest()


_UINTS = [cbor(n) for n in range(256)]


def _uint(n: int) -> bytes:
    return _UINTS[n] if n < 256 else _head(0, n)


def block_digests(token_ids: Sequence[int], block_size: int, cache_salt: str | None = None,
                  seed: str = DEFAULT_SEED) -> list[bytes]:
    """The 32-byte chained hash of every full block of `token_ids` (a partial last block has none)."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, not {block_size}")
    parent, out = none_hash(seed), []
    head = b"\x83" + _head(2, 32)  # a 3-array, then the parent as 32 bytes
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        tokens = token_ids[start:start + block_size]
        extra = cbor((("cache_salt", cache_salt),)) if cache_salt and start == 0 else b"\xf6"
        body = _head(4, len(tokens)) + b"".join(map(_uint, tokens))
        parent = hashlib.sha256(head + parent + body + extra).digest()
        out.append(parent)
    return out


def external(digest: bytes) -> int:
    """A 32-byte hash as KV events carry it: its low 64 bits (last 8 bytes, big endian) as an int."""
    return int.from_bytes(digest, "big") & _MASK_64


def block_hashes(token_ids: Sequence[int], block_size: int, cache_salt: str | None = None,
                 seed: str = DEFAULT_SEED) -> list[int]:
    """The event-form hash (64-bit int) of every full block of `token_ids`, in prompt order."""
    return [external(d) for d in block_digests(token_ids, block_size, cache_salt, seed)]


def first_block_hash(token_ids: Sequence[int], block_size: int, seed: str = DEFAULT_SEED) -> int | None:
    """The event-form hash of the first block alone (None when `token_ids` is shorter than a block): what a
    node's `BlockStored` for a prompt's start must carry, if the node hashes as the router does."""
    digests = block_digests(token_ids[:block_size], block_size, seed=seed)
    return external(digests[0]) if digests else None
