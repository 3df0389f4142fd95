"""Prefill side: which requests' blocks are published for pulling, and until when.

A finished prefill request's blocks stay allocated (vLLM's delay-free) while they are published here. They
come back to the engine, through `drain_finished()`, when the decode side releases them or when the lease
runs out; a lease never runs out while a transfer of its blocks is in flight. Thread-safe: the block
server's connection threads and the engine's worker thread share one table.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

GONE_MEMORY = 4096  # how many released/expired request ids are remembered, to refuse them without waiting


class UnknownRequestError(KeyError):
    """The request's blocks are not published: never were, released, or expired."""


@dataclass
class _Lease:
    block_ids: list[int]
    deadline_s: float
    transfers_in_flight: int = 0


class LeaseTable:
    """Published requests: request id -> block ids and lease deadline (monotonic seconds)."""

    def __init__(self) -> None:
        self._leases: dict[str, _Lease] = {}
        self._released: set[str] = set()
        self._expired: set[str] = set()
        self._gone: OrderedDict[str, str] = OrderedDict()
        self._cond = threading.Condition()

    def publish(self, request_id: str, block_ids: Sequence[int], lease_s: float) -> None:
        with self._cond:
            self._gone.pop(request_id, None)
            self._leases[request_id] = _Lease(list(block_ids), time.monotonic() + lease_s)
            self._cond.notify_all()
        logger.debug("published %s: %d blocks, lease %.1f s", request_id, len(block_ids), lease_s)

    def checkout(self, request_id: str, wait_s: float = 0.0) -> list[int]:
        """Start a transfer of the request's blocks: its lease cannot expire until `checkin`.

        Waits up to `wait_s` for a request not published yet; raises `UnknownRequestError`.
        """
        deadline_s = time.monotonic() + wait_s
        with self._cond:
            while True:
                self._expire_locked(time.monotonic())
                lease = self._leases.get(request_id)
                if lease is not None:
                    lease.transfers_in_flight += 1
                    return list(lease.block_ids)
                if request_id in self._gone:
                    raise UnknownRequestError(f"request {request_id} was {self._gone[request_id]}")
                remaining_s = deadline_s - time.monotonic()
                if remaining_s <= 0:
                    raise UnknownRequestError(f"request {request_id} is not published")
                self._cond.wait(remaining_s)

    def checkin(self, request_id: str) -> None:
        """A transfer started by `checkout` ended (either way)."""
        with self._cond:
            lease = self._leases.get(request_id)
            if lease is not None:
                lease.transfers_in_flight -= 1

    def release(self, request_id: str, wait_s: float = 0.0) -> bool:
        """The decode side is done with the blocks; False if they were not published. Waits up to `wait_s`
        for a request not published yet: a release may overtake the publication (the router has the prefill's
        answer as soon as the engine finishes the request; the worker publishes its blocks a step later), as a
        pull may; one that found nothing would leave the blocks to the lease."""
        deadline_s = time.monotonic() + wait_s
        with self._cond:
            while request_id not in self._leases:
                remaining_s = deadline_s - time.monotonic()
                if request_id in self._gone or remaining_s <= 0:
                    return False
                self._cond.wait(remaining_s)
            del self._leases[request_id]
            self._released.add(request_id)
            self._remember_gone(request_id, "released")
        logger.debug("released %s", request_id)
        return True

    def drain_finished(self) -> tuple[set[str], set[str]]:
        """(released, expired) request ids since the last call: their blocks may be freed now."""
        with self._cond:
            self._expire_locked(time.monotonic())
            released, expired = self._released, self._expired
            self._released, self._expired = set(), set()
        for request_id in expired:
            logger.warning("KV lease of request %s expired before decode pulled it; freeing its blocks",
                           request_id)
        return released, expired

    def pending(self) -> int:
        with self._cond:
            return len(self._leases)

    def _expire_locked(self, now_s: float) -> None:
        overdue = [rid for rid, lease in self._leases.items()
                   if lease.deadline_s <= now_s and lease.transfers_in_flight == 0]
        for request_id in overdue:
            del self._leases[request_id]
            self._expired.add(request_id)
            self._remember_gone(request_id, "expired")

    def _remember_gone(self, request_id: str, how: str) -> None:
        self._gone[request_id] = how
        while len(self._gone) > GONE_MEMORY:
            self._gone.popitem(last=False)
