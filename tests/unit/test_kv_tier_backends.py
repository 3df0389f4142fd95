"""The KV tier's backends against the real thing: a directory, and a real redis-server (started here on a free
loopback port). Write once (NX), read back raw bytes, TTL, the memory cap and its evictions counted, and a
tier that is down or hung failing fast as TierError (never a stall)."""

from __future__ import annotations

import os
import time

import pytest

from transport.kv_tier import backend as backends
from transport.kv_tier.backend import TierError
from transport.kv_tier.keys import Namespace
from transport.kv_tier.settings import KvTierSettings
from tests.support.redis_server import redis_server

pytestmark = pytest.mark.timeout(60)
NS = Namespace("0123456789ab")
MIB = 2**20


def _keys(n: int, salt: int = 0) -> list[bytes]:
    return [NS.key(bytes([salt, i]) * 16) for i in range(n)]


@pytest.fixture(scope="module")
def redis():
    with redis_server(max_bytes=8 * MIB) as server:
        yield server


def _redis_tier(url: str, timeout_s: float = 1.0, **settings):
    return backends.create(KvTierSettings(backend="redis", url=url, **settings), timeout_s=timeout_s)


def _disk_tier(path, timeout_s: float = 1.0, **settings):
    return backends.create(KvTierSettings(backend="disk", path=str(path), **settings), timeout_s=timeout_s)


@pytest.fixture(params=["redis", "disk"])
def tier(request, tmp_path):
    if request.param == "disk":
        backend = _disk_tier(tmp_path / "tier")
    else:
        server = request.getfixturevalue("redis")
        backend = _redis_tier(server.url)
        backend._client.flushall()
    yield backend
    backend.close()


def test_the_registry_names_both_backends():
    assert set(backends.names()) >= {"redis", "disk"}
    assert backends.backend_class("disk").hit_source == "disk" and backends.backend_class("redis").hit_source == "host"
    with pytest.raises(ValueError, match="unknown KV tier backend"):
        backends.backend_class("lmcache")


def test_put_once_get_raw_bytes_contains_and_missing(tier):
    keys, value = _keys(3), os.urandom(100_000) + b"\0\r\n$-1\r\n"  # raw bytes, nothing escaped or pickled
    assert tier.contains(keys, budget_s=1.0) == [False] * 3
    assert tier.put(keys[0], bytearray(value)) is True
    assert tier.put(keys[0], b"other") is False, "an entry is written once (NX)"
    assert tier.get(keys[0]) == value
    assert tier.get(keys[1]) is None
    assert tier.contains(keys, budget_s=1.0) == [True, False, False]
    assert tier.missing(keys) == keys[1:]
    tier.delete(keys[0])
    assert tier.get(keys[0]) is None


def test_entries_expire_after_the_ttl(redis, tmp_path):
    for backend in (_redis_tier(redis.url, ttl_s=0.3), _disk_tier(tmp_path, ttl_s=0.3)):
        key = _keys(1, salt=7)[0]
        assert backend.put(key, b"x" * 10)
        assert backend.get(key) == b"x" * 10
        time.sleep(0.5)
        assert backend.get(key) is None and backend.contains([key], 1.0) == [False]


def test_redis_holds_its_memory_cap_and_counts_evictions(redis):
    tier = _redis_tier(redis.url)
    tier._client.flushall()
    before = tier.evicted_total()
    block = os.urandom(MIB)
    for key in _keys(24, salt=1):  # 24 MiB into an 8 MiB server
        assert tier.put(key, block)
    used = tier._client.info("memory")["used_memory"]
    assert used <= 8 * MIB * 1.05
    assert tier.evicted_total() - before >= 16
    assert sum(tier.contains(_keys(24, salt=1), 1.0)) <= 8


def test_disk_holds_its_cap_evicting_the_least_recently_used(tmp_path):
    tier = _disk_tier(tmp_path, max_bytes=4 * MIB)
    keys, block, start_s = _keys(10, salt=2), os.urandom(MIB // 2), time.time() - 100
    for i, key in enumerate(keys):
        assert tier.put(key, block)
        os.utime(tier.path_of(key), (start_s + i, start_s + i))  # written one second apart
        if i == 6:
            tier.get(keys[0])  # used recently: outlives the others
    assert tier.usage_bytes() <= 4 * MIB
    assert tier.evicted_total() >= 2
    assert tier.get(keys[0]) is not None and tier.get(keys[-1]) is not None
    assert tier.get(keys[1]) is None, "the least recently used entry goes first"


def test_disk_writes_are_atomic_renames(tmp_path):
    tier = _disk_tier(tmp_path)
    key = _keys(1, salt=3)[0]
    tier.put(key, b"abc")
    path = tier.path_of(key)
    assert path.read_bytes() == b"abc" and path.name.endswith(".kvb") and path.parent.parent.name == NS.id
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_disk_write_errors_are_tier_errors(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the tier's directory should be")
    tier = _disk_tier(blocker)
    with pytest.raises(TierError):
        tier.put(_keys(1)[0], b"x")


def test_redis_down_fails_at_once():
    with redis_server() as server:
        url = server.url
    tier = _redis_tier(url, timeout_s=1.0)
    started_s = time.monotonic()
    for call in (lambda: tier.contains(_keys(2), 1.0), lambda: tier.get(_keys(1)[0]),
                 lambda: tier.put(_keys(1)[0], b"x"), tier.evicted_total):
        with pytest.raises(TierError):
            call()
    assert time.monotonic() - started_s < 1.0, "no retries, no backoff: a down tier costs nothing"


def test_a_hung_redis_times_out_within_the_timeout(redis):
    tier = _redis_tier(redis.url, timeout_s=0.2)
    tier.contains(_keys(1), 0.2)  # connected before the server hangs
    redis.pause()
    try:
        started_s = time.monotonic()
        with pytest.raises(TierError):
            tier.contains(_keys(4), 0.2)
        assert time.monotonic() - started_s < 1.0
    finally:
        redis.resume()


def test_redis_with_a_password(redis):
    with redis_server(password="sekrit") as server:
        with pytest.raises(TierError):
            _redis_tier(server.url).contains(_keys(1), 1.0)
        tier = backends.create(KvTierSettings(backend="redis", url=server.url), timeout_s=1.0, password="sekrit")
        assert tier.put(_keys(1)[0], b"v") and tier.get(_keys(1)[0]) == b"v"
