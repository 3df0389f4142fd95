"""The `redis` backend: entries in a Redis server (redis-py; the one module that imports it).

One key per block, its value a sealed entry (raw bytes: redis-py sends bytes as they are and returns them
as they are, `decode_responses=False`; nothing is pickled). Stores are `SET key value PX ttl NX`: an entry
is written once, and lives `ttl_s` from then. The memory cap is the server's `maxmemory` with the
`allkeys-lru` policy (`disagg kv-tier` starts it so): a full server evicts the least recently used entries
and counts them in `INFO stats` `evicted_keys`; with `noeviction` it refuses the write (a TierError here).

Failing fast matters more than retrying: a request never waits for a tier that is down. redis-py's default
retries turn a refused connection into a ~4.5 s stall (issue 16 closing note), so the client retries
nothing (`Retry(NoBackoff(), 0)`) and every socket operation is bounded by `timeout_s`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from transport.kv_tier.backend import TierBackend, TierError
from transport.kv_tier.settings import KvTierSettings

_FAILURES = (redis.RedisError, OSError)  # ConnectionError, TimeoutError, OutOfMemoryError, ... and sockets


def client(url: str, *, timeout_s: float, password: str | None = None) -> Any:
    """A redis-py client for `url` that fails within `timeout_s` and never retries."""
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=min(timeout_s, 1.0),
                                retry=Retry(NoBackoff(), 0), decode_responses=False, health_check_interval=0,
                                **({"password": password} if password else {}))


def server_facts(url: str, *, timeout_s: float = 1.0, password: str | None = None) -> dict[str, int]:
    """The server's memory and key counters (`INFO memory`, `INFO stats`, `DBSIZE`) as integers: `used_memory`,
    `maxmemory`, `evicted_keys`, `expired_keys`, `keyspace_hits`, `keyspace_misses`, `keys`. TierError when
    the server does not answer."""
    try:
        conn = client(url, timeout_s=timeout_s, password=password)
        memory, stats, keys = conn.info("memory"), conn.info("stats"), conn.dbsize()
        conn.close()
    except _FAILURES as exc:
        raise TierError(f"redis at {url}: {exc}") from None
    facts = {name: int(memory.get(name, 0)) for name in ("used_memory", "maxmemory")}
    facts.update({name: int(stats.get(name, 0)) for name in ("evicted_keys", "expired_keys", "keyspace_hits",
                                                             "keyspace_misses")})
    facts["keys"] = int(keys)
    return facts


class RedisTier(TierBackend):
    name = "redis"
    hit_source = "host"  # a server's memory, reached over the network

    def __init__(self, settings: KvTierSettings, *, timeout_s: float, password: str | None = None) -> None:
        assert settings.url is not None
        self.url = settings.url
        self._ttl_ms = max(1, math.ceil(settings.ttl_s * 1000))
        self._client = client(settings.url, timeout_s=timeout_s, password=password)

    def contains(self, keys: Sequence[bytes], budget_s: float) -> list[bool]:
        if not keys:
            return []
        try:
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.exists(key)
            return [bool(found) for found in pipe.execute()]
        except _FAILURES as exc:
            raise TierError(f"redis lookup: {exc}") from None

    def get(self, key: bytes) -> bytes | None:
        try:
            return self._client.get(key)
        except _FAILURES as exc:
            raise TierError(f"redis GET: {exc}") from None

    def put(self, key: bytes, value: bytes | bytearray) -> bool:
        try:
            return bool(self._client.set(key, value, px=self._ttl_ms, nx=True))
        except _FAILURES as exc:
            raise TierError(f"redis SET: {exc}") from None

    def missing(self, keys: Sequence[bytes]) -> list[bytes]:
        present = self.contains(keys, budget_s=float("inf"))
        return [key for key, here in zip(keys, present) if not here]

    def delete(self, key: bytes) -> None:
        try:
            self._client.delete(key)
        except _FAILURES as exc:
            raise TierError(f"redis DEL: {exc}") from None

    def evicted_total(self) -> int | None:
        try:
            return int(self._client.info("stats").get("evicted_keys", 0))
        except _FAILURES as exc:
            raise TierError(f"redis INFO: {exc}") from None

    def close(self) -> None:
        try:
            self._client.close()
        except _FAILURES:
            pass
