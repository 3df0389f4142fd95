"""vLLM 0.32's KV cache event messages as the router decodes them (msgspec, imported only here; no pickle).

A node's publisher (vllm/distributed/kv_events.py, `ZmqEventPublisher`) sends each batch as three ZMQ
frames: the topic, the sequence number (u64, big endian; from 0 at each process start) and the payload,
`msgspec.msgpack` of a `KVEventBatch`: an array `[ts: float, events: [...], data_parallel_rank: int|None]`
whose events are maps tagged by class name, e.g. `{"type": "BlockRemoved", "block_hashes": [...],
"medium": "GPU", "group_idx": 0}`. Its replay socket answers a request with frames `[b"", topic, seq,
payload]` per buffered batch and ends with `[b"", b"", seq -1 (signed), b""]`.

`decode_batch(payload)` returns the batch's events in order; an event of a type this module does not know
(a later vLLM's) is skipped and counted in `Batch.skipped`, so one new event type does not blind the
router. Block hashes are ints (vLLM's default, `VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1`); a node that sends
them as 32 bytes has them cut to the same int (router.block_hash.external). Field names and order follow
vLLM's structs; each field the router does not use has a default, so an older or newer vLLM's omitted or
extra fields decode too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import msgspec

from router.block_hash import external

END_SEQ = -1  # the replay socket's end marker, as a signed 8-byte int


class BlockStored(msgspec.Struct, tag=True, omit_defaults=True, gc=False):
    """Consecutive full blocks of one request became cached: `block_hashes` in prompt order, chained from
    `parent_block_hash` (None: the first of them is the prompt's first block); `token_ids` are theirs."""

    block_hashes: list[Union[int, bytes]]
    parent_block_hash: Union[int, bytes, None] = None
    token_ids: list[int] = []
    block_size: int = 0
    lora_id: Union[int, None] = None
    medium: Union[str, None] = None
    lora_name: Union[str, None] = None
    extra_keys: Union[list[Any], None] = None
    group_idx: Union[int, None] = None
    locality: Union[str, None] = None
    ownership: Union[str, None] = None


class BlockRemoved(msgspec.Struct, tag=True, omit_defaults=True, gc=False):
    """Cached blocks were evicted (or re-hashed)."""

    block_hashes: list[Union[int, bytes]]
    medium: Union[str, None] = None
    group_idx: Union[int, None] = None
    locality: Union[str, None] = None
    ownership: Union[str, None] = None


class AllBlocksCleared(msgspec.Struct, tag=True, omit_defaults=True, gc=False):
    """The node's prefix cache was reset (vLLM's reset_prefix_cache: sleep mode, weight reloads)."""


KvEvent = Union[BlockStored, BlockRemoved, AllBlocksCleared]


class _RawBatch(msgspec.Struct, array_like=True, gc=False):
    ts: float
    events: list[msgspec.Raw]
    data_parallel_rank: Union[int, None] = None


@dataclass(frozen=True)
class Batch:
    """One decoded batch: its events in order, and how many events of unknown types were skipped."""

    ts: float
    events: tuple[KvEvent, ...]
    skipped: int = 0


_BATCH = msgspec.msgpack.Decoder(_RawBatch)
_EVENT = msgspec.msgpack.Decoder(KvEvent)


class WireError(ValueError):
    """A payload that is not a KV event batch."""


def decode_batch(payload: bytes) -> Batch:
    """The events of one published payload; WireError if it is not a batch at all."""
    try:
        raw = _BATCH.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise WireError(f"not a KV event batch: {exc}") from None
    events, skipped = [], 0
    for item in raw.events:
        try:
            events.append(_normalized(_EVENT.decode(item)))
        except (msgspec.DecodeError, msgspec.ValidationError):
            skipped += 1
    return Batch(raw.ts, tuple(events), skipped)


def _as_int(block_hash: int | bytes) -> int:
    return external(block_hash) if isinstance(block_hash, bytes) else block_hash


def _normalized(event: KvEvent) -> KvEvent:
    if isinstance(event, BlockStored):
        parent = event.parent_block_hash
        return msgspec.structs.replace(event, block_hashes=[_as_int(h) for h in event.block_hashes],
                                       parent_block_hash=None if parent is None else _as_int(parent))
    if isinstance(event, BlockRemoved):
        return msgspec.structs.replace(event, block_hashes=[_as_int(h) for h in event.block_hashes])
    return event


def seq_of(frame: bytes) -> int:
    """A sequence-number frame as an int (the replay end marker is -1)."""
    return int.from_bytes(frame, "big", signed=True)


def seq_frame(seq: int) -> bytes:
    """A replay request's start sequence number as a frame."""
    return seq.to_bytes(8, "big")
