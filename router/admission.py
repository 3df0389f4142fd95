"""Admission control: at most `max_inflight` requests served at once, at most `max_queue` waiting.

A request that finds the queue full is refused at once with `Overloaded` (429), whose `Retry-After` is
an estimate of when a queue slot frees up: the recent mean time a request holds its slot, times the
queue's length over the number of slots. Waiting is bounded by the request's own deadline, which the
caller enforces by cancelling `acquire`.
"""

from __future__ import annotations

import asyncio
import time

from core.errors import Overloaded

HOLD_EWMA_WEIGHT = 0.1  # weight of the newest request in the mean hold time
RETRY_AFTER_MAX_S = 60.0


class Slot:
    """One admitted request's place; `release` is idempotent."""

    def __init__(self, admission: "Admission") -> None:
        self._admission: Admission | None = admission
        self.acquired_s = time.monotonic()

    def release(self) -> None:
        if self._admission is not None:
            self._admission._release(time.monotonic() - self.acquired_s)
            self._admission = None


class Admission:
    def __init__(self, max_inflight: int, max_queue: int) -> None:
        self.max_inflight, self.max_queue = max_inflight, max_queue
        self._slots = asyncio.Semaphore(max_inflight)
        self.queued = 0
        self.in_flight = 0
        self._mean_hold_s = 1.0

    async def acquire(self) -> Slot:
        """A slot, after waiting in the queue if need be; `Overloaded` when the queue is full."""
        if self._slots.locked():
            if self.queued >= self.max_queue:
                raise Overloaded(f"the router is at its limit ({self.max_inflight} requests in flight, "
                                 f"{self.queued} queued): retry later", retry_after_s=self.retry_after_s())
            self.queued += 1
            try:
                await self._slots.acquire()
            finally:
                self.queued -= 1
        else:
            await self._slots.acquire()
        self.in_flight += 1
        return Slot(self)

    def retry_after_s(self) -> float:
        estimate_s = self._mean_hold_s * (self.queued + 1) / self.max_inflight
        return min(RETRY_AFTER_MAX_S, max(1.0, estimate_s))

    def _release(self, held_s: float) -> None:
        self.in_flight -= 1
        self._mean_hold_s += HOLD_EWMA_WEIGHT * (held_s - self._mean_hold_s)
        self._slots.release()
