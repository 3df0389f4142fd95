"""The background writer: newly computed blocks go to the tier off the engine's thread, within a byte bound.

The worker copies a block out of the KV cache into an unsealed entry (the only work on the engine's thread)
and `submit`s it. This thread seals it (CRC-32C), skips blocks the tier already holds (one `missing` call per
batch: another node may have stored them), and `put`s the rest. When the entries waiting exceed
`max_pending_bytes`, the oldest are dropped: a slow or full tier costs future hits, never the engine's time
or memory. After a failed tier operation the writer's circuit breaker opens, and `accepting()` tells the
worker not to copy blocks out until the cool-down is over.

Events reported through `record(name, value)` (thread-safe for the caller to handle): `stored_blocks`,
`stored_bytes`, `store_errors`, `dropped_stores`, `evicted_total` (the backend's count, polled every
`EVICTIONS_POLL_S` while writing).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

from transport.kv_tier import entry as entries
from transport.kv_tier.backend import TierBackend, TierError
from transport.kv_tier.breaker import CircuitBreaker

log = logging.getLogger(__name__)
EVICTIONS_POLL_S = 2.0
BATCH_MAX = 64
_DELETE = None  # an op whose entry is None deletes the key (a corrupt entry found by a load)

Recorder = Callable[[str, float], None]


class StoreWriter:
    def __init__(self, backend: TierBackend, *, max_pending_bytes: int, breaker_cooldown_s: float,
                 record: Recorder) -> None:
        self.backend = backend
        self.max_pending_bytes = max_pending_bytes
        self._record = record
        self._breaker = CircuitBreaker(breaker_cooldown_s)
        self._queue: collections.deque[tuple[bytes, bytearray | None]] = collections.deque()
        self._pending_bytes = 0
        self._cond = threading.Condition()
        self._closed = False
        self._polled_at_s = 0.0
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="disagg-kv-tier-writer", daemon=True)
        self._thread.start()

    def accepting(self) -> bool:
        """Whether stores are worth copying out now (False while the breaker is open)."""
        with self._cond:
            return not self._closed and self._breaker.ready()

    def submit(self, items: list[tuple[bytes, bytearray]]) -> None:
        """Queue unsealed entries under their keys; drop the oldest waiting ones beyond the byte bound."""
        with self._cond:
            for key, entry in items:
                self._queue.append((key, entry))
                self._pending_bytes += len(entry)
            dropped = 0
            while self._pending_bytes > self.max_pending_bytes and self._queue:
                _, old = self._queue.popleft()
                self._pending_bytes -= len(old) if old is not None else 0
                dropped += old is not None
            self._cond.notify()
        if dropped:
            self._record("dropped_stores", dropped)

    def delete(self, key: bytes) -> None:
        """Queue the removal of a key (best effort)."""
        with self._cond:
            self._queue.append((key, _DELETE))
            self._cond.notify()

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything queued was handled (tests, shutdown); False on timeout."""
        deadline_s = time.monotonic() + timeout_s
        with self._cond:
            while self._queue or self._busy:
                left_s = deadline_s - time.monotonic()
                if left_s <= 0:
                    return False
                self._cond.wait(min(left_s, 0.05))
        return True

    def close(self, timeout_s: float = 2.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
        self.backend.close()

    def _take(self) -> list[tuple[bytes, bytearray | None]] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._busy = False
                self._cond.notify_all()
                self._cond.wait()
            if self._closed:
                return None
            batch = [self._queue.popleft() for _ in range(min(BATCH_MAX, len(self._queue)))]
            self._pending_bytes -= sum(len(e) for _, e in batch if e is not None)
            self._busy = True
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            try:
                self._write(batch)
            except Exception:  # never let the writer die: stores would pile up
                log.exception("KV tier writer: unexpected error; %d stores dropped", len(batch))
                self._record("dropped_stores", len(batch))

    def _write(self, batch: list[tuple[bytes, bytearray | None]]) -> None:
        puts = [(key, e) for key, e in batch if e is not None]
        with self._cond:
            usable = self._breaker.allow()
        if not usable:
            self._record("dropped_stores", len(puts))
            return
        try:
            for key, e in batch:
                if e is None:
                    self.backend.delete(key)
            todo = set(self.backend.missing([key for key, _ in puts])) if puts else set()
            for key, e in puts:
                if key in todo and self.backend.put(key, entries.seal(e)):
                    self._record("stored_blocks", 1)
                    self._record("stored_bytes", len(e))
            self._poll_evictions()
        except TierError as exc:
            with self._cond:
                self._breaker.record_failure()
            log.warning("KV tier store failed (%s); stores skipped for %.0f s", exc, self._breaker.cooldown_s)
            self._record("store_errors", 1)
            self._record("dropped_stores", len(puts))
            return
        with self._cond:
            self._breaker.record_success()

    def _poll_evictions(self) -> None:
        now_s = time.monotonic()
        if now_s - self._polled_at_s < EVICTIONS_POLL_S:
            return
        self._polled_at_s = now_s
        evicted = self.backend.evicted_total()
        if evicted is not None:
            self._record("evicted_total", evicted)
