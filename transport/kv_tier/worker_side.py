"""Worker-side half of the tier connector (the vLLM worker process, next to the KV tensors).

The KV cache is mapped as the TCP transport maps it (`transport.tcp.kv_tensors.build_block_store`): one
block is the same bytes in every layer, read and written in place. An entry's payload is those bytes, layer
by layer (`transport.kv_tier.entry`).

Loads (`load`, from `start_load_kv`, before the forward pass that needs them): each planned block is read
from the tier, checked (layout, block size, hash, length, CRC-32C) and copied into its block. The first
block that is missing (evicted or expired since the lookup), corrupt, or not read in time fails the rest of
that request's blocks: they are reported by `get_block_ids_with_load_errors`, and vLLM, with
`kv_load_failure_policy: "recompute"`, computes them again in a later step (the step's output for that
request is discarded). A corrupt entry is removed from the tier so it is stored again once recomputed.

Stores (`save`, from `wait_for_save`, after the forward pass): each completed prompt block is copied out
into an unsealed entry and handed to the background writer (`transport.kv_tier.writer`); nothing else
happens on the engine's thread. A step in which any load failed stores nothing: its forward pass may have
read the failed blocks, and vLLM computes it again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import torch

from transport.kv_tier import entry as entries
from transport.kv_tier.backend import TierBackend, TierError
from transport.kv_tier.keys import Namespace
from transport.kv_tier.metadata import KvTierMetadata
from transport.kv_tier.settings import KvTierSettings
from transport.kv_tier.stats import KvTierStats
from transport.kv_tier.writer import StoreWriter
from transport.tcp.blocks import BlockStore
from transport.tcp.kv_tensors import build_block_store

log = logging.getLogger(__name__)


class TierWorker:
    def __init__(self, settings: KvTierSettings, namespace: Namespace, block_size: int, backend: TierBackend) -> None:
        self.settings, self.namespace, self.block_size = settings, namespace, block_size
        self.backend = backend
        self.store: BlockStore | None = None
        self.layout: entries.EntryLayout | None = None
        self._lock = threading.Lock()
        self._stats = KvTierStats()
        self._invalid_block_ids: set[int] = set()
        self._step_failed = False
        self.writer = StoreWriter(backend, max_pending_bytes=settings.max_pending_store_bytes,
                                  breaker_cooldown_s=settings.breaker_cooldown_s, record=self._record)

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        self.store = build_block_store(kv_caches)
        self.layout = entries.EntryLayout(self.store.layout_id, self.block_size, self.store.block_nbytes)
        log.info("KV tier %s, namespace %s: %d-byte blocks, layout %#010x", self.settings.backend,
                 self.namespace.id, self.store.block_nbytes, self.store.layout_id)

    def load(self, meta: KvTierMetadata) -> None:
        """Fill this step's planned blocks from the tier (synchronously; failures become load errors)."""
        for request_id, blocks in meta.loads.items():
            started_s = time.perf_counter()
            loaded = self._load_request(request_id, blocks)
            if loaded < len(blocks):
                self._step_failed = True
                with self._lock:
                    self._invalid_block_ids.update(block_id for block_id, _ in blocks[loaded:])
                    self._stats.record("load_errors")
            if loaded:
                self._record("load_seconds", time.perf_counter() - started_s)

    def save(self, meta: KvTierMetadata) -> None:
        """Copy the blocks this step completed out of the KV cache and queue them for the tier."""
        failed, self._step_failed = self._step_failed, False
        if not meta.stores or self.store is None:
            return
        if failed or not self.writer.accepting():
            self._record("dropped_stores", len(meta.stores))
            return
        self.writer.submit([(self.namespace.key(block_hash), self._entry_of(block_id, block_hash))
                            for _, block_id, block_hash in meta.stores])

    def get_block_ids_with_load_errors(self) -> set[int]:
        with self._lock:
            invalid, self._invalid_block_ids = self._invalid_block_ids, set()
        return invalid

    def take_stats(self) -> KvTierStats | None:
        with self._lock:
            return None if self._stats.is_empty() else self._stats.clone_and_reset()

    def shutdown(self) -> None:
        self.writer.close()

    def _load_request(self, request_id: str, blocks: Sequence[tuple[int, bytes]]) -> int:
        """How many of the blocks, in order, were loaded (the rest failed)."""
        assert self.store is not None and self.layout is not None, "register_kv_caches was not called"
        for index, (block_id, block_hash) in enumerate(blocks):
            key = self.namespace.key(block_hash)
            try:
                data = self.backend.get(key)
            except TierError as exc:
                log.warning("KV tier load for %s failed (%s); recomputing %d blocks", request_id, exc,
                            len(blocks) - index)
                return index
            if data is None:
                log.info("KV tier entry of %s's block %d is gone since the lookup; recomputing", request_id, index)
                return index
            try:
                body = entries.unpack(data, self.layout, block_hash)
            except entries.EntryError as exc:
                log.warning("KV tier entry of %s's block %d is bad (%s: %s); removing it and recomputing",
                            request_id, index, exc.check, exc)
                self._record("corrupt_entries", 1)
                self.writer.delete(key)
                return index
            self._copy_in(block_id, body)
            self._record("loaded_blocks", 1)
            self._record("loaded_bytes", len(body))
        return len(blocks)

    def _copy_in(self, block_id: int, body: memoryview) -> None:
        assert self.store is not None
        views, commit = self.store.write_views([block_id])
        offset = 0
        for view in views:
            view[:] = body[offset:offset + len(view)]
            offset += len(view)
        commit()

    def _entry_of(self, block_id: int, block_hash: bytes) -> bytearray:
        assert self.store is not None and self.layout is not None
        entry = entries.allocate(self.layout, block_hash)
        target, offset = entries.payload(entry), 0
        for view in self.store.read_views([block_id]):
            target[offset:offset + len(view)] = view
            offset += len(view)
        return entry

    def _record(self, name: str, value: float) -> None:
        with self._lock:
            self._stats.record(name, value)
