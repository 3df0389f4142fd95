"""Where tier entries live: the `TierBackend` interface and the registry of backends (`redis`, `disk`).

A backend stores opaque values (sealed entries, `transport.kv_tier.entry`) under tier keys
(`transport.kv_tier.keys`); it neither builds nor checks entries. Adding one is a module with a
`TierBackend` subclass and one `register(...)` line below; `create(settings)` imports its module only then,
so an optional client library (redis-py) is imported by the one module that needs it.

Sides: the scheduler side calls `contains` (one request's lookup, within its time budget); the worker side
calls `get`, `missing`, `put`, `delete` and `evicted_total` (loads on the engine's thread, stores on the
background writer's). A backend instance is used by one side; `get`/`put` may be called from two threads.

Errors: every method raises `TierError` when the tier cannot answer (down, too slow, refusing, out of
space); callers count it and carry on without the tier (circuit breaker). A missing key is not an error.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from transport.kv_tier.settings import KvTierSettings


class TierError(Exception):
    """The tier could not do what was asked: down, slow, refused, full. The request goes on without it."""


class TierBackend(ABC):
    """One place tier entries live. Values are bytes-like; keys are `keys.Namespace.key` bytes."""

    name: ClassVar[str]
    hit_source: ClassVar[str]  # vLLM's CacheHitSource value for tokens loaded from it ("disk", "host")

    @abstractmethod
    def contains(self, keys: Sequence[bytes], budget_s: float) -> list[bool]:
        """Scheduler side: which of `keys` exist, in order; may stop early (shorter list) when `budget_s` is
        spent. TierError when the tier cannot answer."""

    @abstractmethod
    def get(self, key: bytes) -> bytes | None:
        """The value, or None when absent (evicted, expired)."""

    @abstractmethod
    def put(self, key: bytes, value: bytes | bytearray) -> bool:
        """Store `value` unless the key exists; True when stored, False when it was already there."""

    def missing(self, keys: Sequence[bytes]) -> list[bytes]:
        """Those of `keys` not stored (the writer skips the others). Default: `contains` with no budget."""
        present = self.contains(keys, budget_s=float("inf"))
        return [key for key, here in zip(keys, present) if not here]

    @abstractmethod
    def delete(self, key: bytes) -> None:
        """Remove the key if present (a corrupt entry)."""

    def evicted_total(self) -> int | None:
        """Entries evicted to hold the memory cap, as this tier counts them (Redis: the server's
        `evicted_keys`; disk: this process's evictions), or None when unknown."""
        return None

    def close(self) -> None:
        """Release connections and files."""


_BACKENDS: dict[str, str] = {}  # name -> "module:Class"


def register(name: str, target: str) -> None:
    """Add a backend: `target` is "module:Class", imported on first use."""
    _BACKENDS[name] = target


def names() -> tuple[str, ...]:
    return tuple(_BACKENDS)


def backend_class(name: str) -> type[TierBackend]:
    """The class registered as `name` (its module imported now); ValueError for an unknown name."""
    try:
        module_name, _, class_name = _BACKENDS[name].partition(":")
    except KeyError:
        raise ValueError(f"unknown KV tier backend {name!r}; known: {', '.join(names())}") from None
    return getattr(importlib.import_module(module_name), class_name)


def create(settings: KvTierSettings, *, timeout_s: float, password: str | None = None) -> TierBackend:
    """A backend for `settings`, whose single operations give up after `timeout_s` (TierError)."""
    return backend_class(settings.backend)(settings, timeout_s=timeout_s, password=password)


register("redis", "transport.kv_tier.redis_backend:RedisTier")
register("disk", "transport.kv_tier.disk_backend:DiskTier")
