"""The KV tier's background writer: entries sealed off the caller's thread, blocks the tier already holds not
sent again, the byte bound dropping the oldest waiting stores (counted), a failing tier dropping its batch and
opening the breaker, and the backend's eviction count polled."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from transport.kv_tier import entry as entries
from transport.kv_tier.backend import TierBackend, TierError
from transport.kv_tier.writer import StoreWriter

pytestmark = pytest.mark.timeout(30)
LAYOUT = entries.EntryLayout(1, 16, 1000)


class FakeTier(TierBackend):
    name, hit_source = "fake", "host"

    def __init__(self) -> None:
        self.values: dict[bytes, bytes] = {}
        self.fail = False
        self.gate = threading.Event()
        self.gate.set()

    def contains(self, keys, budget_s):
        self.gate.wait(5)
        if self.fail:
            raise TierError("down")
        return [key in self.values for key in keys]

    def get(self, key):
        return self.values.get(key)

    def put(self, key, value):
        if self.fail:
            raise TierError("down")
        if key in self.values:
            return False
        self.values[key] = bytes(value)
        return True

    def delete(self, key):
        self.values.pop(key, None)

    def evicted_total(self):
        return 42


def _writer(tier: FakeTier, max_pending_bytes: int = 10**9, cooldown_s: float = 60):
    events: Counter[str] = Counter()
    lock = threading.Lock()

    def record(name: str, value: float) -> None:
        with lock:
            events[name] = value if name == "evicted_total" else events[name] + value

    return StoreWriter(tier, max_pending_bytes=max_pending_bytes, breaker_cooldown_s=cooldown_s, record=record), events


def _item(i: int) -> tuple[bytes, bytearray]:
    block_hash = bytes([i]) * 32
    entry = entries.allocate(LAYOUT, block_hash)
    entries.payload(entry)[:] = bytes([i]) * LAYOUT.payload_nbytes
    return b"k%d" % i, entry


def test_entries_are_sealed_and_stored_once():
    tier = FakeTier()
    tier.values[b"k1"] = b"already there"
    writer, events = _writer(tier)
    writer.submit([_item(0), _item(1), _item(2)])
    assert writer.flush(5)
    assert tier.values[b"k1"] == b"already there"
    assert bytes(entries.unpack(tier.values[b"k0"], LAYOUT, bytes([0]) * 32)) == bytes([0]) * 1000
    assert events["stored_blocks"] == 2 and events["stored_bytes"] == 2 * (1000 + entries.HEADER_NBYTES)
    assert events["evicted_total"] == 42
    writer.close()


def test_beyond_the_byte_bound_the_oldest_waiting_stores_are_dropped():
    tier = FakeTier()
    tier.gate.clear()  # the tier hangs: nothing leaves the queue
    writer, events = _writer(tier, max_pending_bytes=3 * 1060)
    writer.submit([_item(0)])  # taken by the writer thread, which then waits on the tier
    for _ in range(100):
        if writer._busy:
            break
        threading.Event().wait(0.01)
    writer.submit([_item(i) for i in range(1, 6)])  # 5 more; 3 fit
    assert events["dropped_stores"] == 2
    tier.gate.set()
    assert writer.flush(5)
    assert set(tier.values) == {b"k0", b"k3", b"k4", b"k5"}
    writer.close()


def test_a_failing_tier_drops_the_batch_and_opens_the_breaker():
    tier = FakeTier()
    tier.fail = True
    writer, events = _writer(tier, cooldown_s=60)
    assert writer.accepting()
    writer.submit([_item(0), _item(1)])
    assert writer.flush(5)
    assert events["store_errors"] == 1 and events["dropped_stores"] == 2
    assert not writer.accepting(), "the worker stops copying blocks out while the tier is failing"
    tier.fail = False
    writer.submit([_item(2)])
    assert writer.flush(5) and events["dropped_stores"] == 3 and not tier.values
    writer.close()


def test_the_breaker_lets_stores_through_again_after_the_cooldown():
    tier = FakeTier()
    tier.fail = True
    writer, events = _writer(tier, cooldown_s=0.1)
    writer.submit([_item(0)])
    assert writer.flush(5)
    tier.fail = False
    threading.Event().wait(0.15)
    assert writer.accepting()
    writer.submit([_item(1)])
    assert writer.flush(5) and b"k1" in tier.values and events["stored_blocks"] == 1
    writer.close()


def test_deletes_are_queued_too():
    tier = FakeTier()
    tier.values[b"bad"] = b"x"
    writer, _ = _writer(tier)
    writer.delete(b"bad")
    assert writer.flush(5) and b"bad" not in tier.values
    writer.close()
