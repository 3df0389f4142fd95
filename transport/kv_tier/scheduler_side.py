"""Scheduler-side half of the tier connector (vLLM's engine-core process, inside the scheduler loop).

Lookup (`get_num_new_matched_tokens`): the prompt's full blocks past the local prefix-cache hit, by vLLM's
chained block hashes (`Request.block_hashes`), are looked up in one call bounded by `lookup_budget_s`; the
tier's answer is the longest run of present blocks. The last prompt token is never claimed (vLLM must
compute it to sample the first token), so at most `(prompt tokens - 1) // block_size` blocks are. Loads are
synchronous: vLLM schedules the request at once and the worker fills the blocks before the forward pass.
A tier that fails or is slow opens a circuit breaker: for `breaker_cooldown_s` no lookup is made and every
request is computed (its blocks counted as misses), then one lookup tries the tier again.

Stores (`build_connector_meta`): each step, the prompt blocks that the step's forward pass completes (from
the request's computed tokens before the step to after it) are sent to the worker to copy out, except
blocks that were local or tier hits (they are already computed, so they are never in that range).

Nothing is held past a request's end: `request_finished` returns (False, None), never `kv_transfer_params`
(the P/D connector's, beside it in the MultiConnector, are the only ones).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from transport.kv_tier.backend import TierBackend, TierError
from transport.kv_tier.breaker import CircuitBreaker
from transport.kv_tier.keys import Namespace
from transport.kv_tier.metadata import KvTierMetadata
from transport.kv_tier.settings import KvTierSettings
from transport.kv_tier.stats import KvTierStats

if TYPE_CHECKING:
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks, KVCacheManager
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.request import Request

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lookup:
    """One request's lookup: blocks from `first_block`, `num_hit` of them found of `num_queried` eligible."""

    first_block: int
    num_hit: int
    num_queried: int
    failed: bool = False


class TierScheduler:
    def __init__(self, settings: KvTierSettings, namespace: Namespace, block_size: int,
                 backend: Callable[[], TierBackend], clock: Callable[[], float] = time.monotonic) -> None:
        self.settings, self.namespace, self.block_size = settings, namespace, block_size
        self._backend_factory = backend
        self._backend: TierBackend | None = None
        self._clock = clock
        self._breaker = CircuitBreaker(settings.breaker_cooldown_s, clock)
        self._lookups: dict[str, Lookup] = {}
        self._tracked: dict[str, Request] = {}
        self._loads: dict[str, list[tuple[int, bytes]]] = {}
        self._stats = KvTierStats()
        self.kv_cache_manager: KVCacheManager | None = None

    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int) -> tuple[int, bool]:
        """Tokens loadable from the tier beyond `num_computed_tokens` (whole blocks), loaded synchronously."""
        self._lookups.pop(request.request_id, None)
        first = num_computed_tokens // self.block_size
        last = min(len(request.block_hashes), (request.num_prompt_tokens - 1) // self.block_size)
        if num_computed_tokens % self.block_size or last <= first:
            return 0, False
        lookup = self._lookup(request.block_hashes[first:last], first)
        self._lookups[request.request_id] = lookup
        return lookup.num_hit * self.block_size, False

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int) -> None:
        """Count the lookup's outcome, plan the load into the blocks just allocated, and follow the request so
        that the blocks it computes are stored."""
        self._tracked[request.request_id] = request
        lookup = self._lookups.pop(request.request_id, None)
        if lookup is None:
            return
        num_hit = num_external_tokens // self.block_size
        self._stats.record("lookups")
        self._stats.record("hit_blocks", num_hit)
        self._stats.record("miss_blocks", lookup.num_queried - num_hit)
        if num_hit:
            (block_ids,) = blocks.get_block_ids()
            span = range(lookup.first_block, lookup.first_block + num_hit)
            self._loads[request.request_id] = [(block_ids[i], request.block_hashes[i]) for i in span]

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KvTierMetadata:
        """This step's loads, and the prompt blocks its forward pass completes (to store)."""
        stores: list[tuple[str, int, bytes]] = []
        for request_id, num_tokens in scheduler_output.num_scheduled_tokens.items():
            request = self._tracked.get(request_id)
            if request is not None:
                stores += self._completed_blocks(request, num_tokens)
        meta = KvTierMetadata(loads=self._loads, stores=stores)
        self._loads = {}
        return meta

    def request_finished(self, request: Request) -> tuple[bool, dict[str, Any] | None]:
        """Forget the request; its blocks are freed as usual and no parameters are returned."""
        self._tracked.pop(request.request_id, None)
        self._lookups.pop(request.request_id, None)
        self._loads.pop(request.request_id, None)
        return False, None

    def take_stats(self) -> KvTierStats | None:
        return None if self._stats.is_empty() else self._stats.clone_and_reset()

    def shutdown(self) -> None:
        if self._backend is not None:
            self._backend.close()

    def _completed_blocks(self, request: Request, num_tokens: int) -> list[tuple[str, int, bytes]]:
        before = request.num_computed_tokens
        prompt_blocks = min(request.num_prompt_tokens // self.block_size, len(request.block_hashes))
        first, end = before // self.block_size, min((before + num_tokens) // self.block_size, prompt_blocks)
        if before + num_tokens >= request.num_prompt_tokens:
            self._tracked.pop(request.request_id, None)  # the prompt is done: nothing more to store
        if end <= first or self.kv_cache_manager is None:
            return []
        (block_ids,) = self.kv_cache_manager.get_block_ids(request.request_id)
        return [(request.request_id, block_ids[i], request.block_hashes[i]) for i in range(first, end)]

    def _lookup(self, block_hashes: list[bytes], first_block: int) -> Lookup:
        if not self._breaker.allow():
            return Lookup(first_block, 0, len(block_hashes))
        keys = [self.namespace.key(h) for h in block_hashes]
        started_s = self._clock()
        try:
            if self._backend is None:
                self._backend = self._backend_factory()
            found = self._backend.contains(keys, self.settings.lookup_budget_s)
        except TierError as exc:
            return self._failed(first_block, len(keys), f"{exc}")
        if self._clock() - started_s > self.settings.lookup_budget_s * 2:
            return self._failed(first_block, len(keys), f"took {self._clock() - started_s:.3f} s")
        self._breaker.record_success()
        num_hit = next((i for i, here in enumerate(found) if not here), len(found))
        return Lookup(first_block, num_hit, len(keys))

    def _failed(self, first_block: int, num_blocks: int, why: str) -> Lookup:
        self._breaker.record_failure()
        self._stats.record("lookup_errors")
        log.warning("KV tier lookup failed (%s): computing; the tier is skipped for %.0f s", why,
                    self._breaker.cooldown_s)
        return Lookup(first_block, 0, num_blocks, failed=True)
