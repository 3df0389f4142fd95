"""The tier connector's halves without a vLLM server: `TierScheduler` planning lookups, loads and stores for
fake requests, `TierWorker` moving blocks between torch CPU tensors shaped like vLLM's KV cache and a real
tier (a directory; a real redis-server for the down/slow cases).

Two "nodes": A computes a prompt and stores its blocks; B, with other KV, finds them, loads them and ends up
with A's bytes. The last prompt token is never claimed; a corrupt or vanished entry becomes load errors for
that block and the ones after it (vLLM recomputes them) and the step stores nothing; a tier that is down costs
one failed lookup, then the breaker skips it."""

from __future__ import annotations

import hashlib
import time
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")

from transport.kv_tier import backend as backends  # noqa: E402
from transport.kv_tier.keys import Namespace  # noqa: E402
from transport.kv_tier.metadata import KvTierMetadata  # noqa: E402
from transport.kv_tier.scheduler_side import TierScheduler  # noqa: E402
from transport.kv_tier.settings import KvTierSettings  # noqa: E402
from transport.kv_tier.worker_side import TierWorker  # noqa: E402
from tests.support.redis_server import redis_server  # noqa: E402

pytestmark = pytest.mark.timeout(120)
LAYERS, BLOCKS, BLOCK_SIZE, HEADS, HEAD = 3, 10, 16, 2, 8
NS = Namespace("a1b2c3d4e5f6")


def kv_caches(seed: int | None) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed or 0)
    shape = (BLOCKS, HEADS, BLOCK_SIZE, 2 * HEAD)  # vLLM's CPU layout
    return {f"model.layers.{i}.self_attn.attn": (torch.randn(shape, generator=generator) if seed is not None
                                                  else torch.zeros(shape)) for i in range(LAYERS)}


def request(request_id: str, num_prompt_tokens: int, salt: bytes = b"") -> SimpleNamespace:
    hashes, parent = [], salt
    for i in range(num_prompt_tokens // BLOCK_SIZE):
        parent = hashlib.sha256(parent + i.to_bytes(4, "big")).digest()
        hashes.append(parent)
    return SimpleNamespace(request_id=request_id, num_prompt_tokens=num_prompt_tokens, block_hashes=hashes,
                           num_computed_tokens=0)


def blocks_of(ids: list[int]) -> SimpleNamespace:
    return SimpleNamespace(get_block_ids=lambda: (list(ids),))


class Node:
    """One engine's scheduler and worker halves over its own KV tensors."""

    def __init__(self, settings: KvTierSettings, seed: int | None) -> None:
        self.kv = kv_caches(seed)
        self.table: dict[str, list[int]] = {}
        self.scheduler = TierScheduler(settings, NS, BLOCK_SIZE, lambda: backends.create(
            settings, timeout_s=settings.lookup_budget_s))
        self.scheduler.kv_cache_manager = SimpleNamespace(get_block_ids=lambda rid: (self.table[rid],))
        self.worker = TierWorker(settings, NS, BLOCK_SIZE, backends.create(settings, timeout_s=settings.op_timeout_s))
        self.worker.register_kv_caches(self.kv)

    def admit(self, req: SimpleNamespace, block_ids: list[int], local_tokens: int = 0) -> int:
        """vLLM's admission: lookup, allocation, update_state_after_alloc. Returns the tier's tokens."""
        matched, load_async = self.scheduler.get_num_new_matched_tokens(req, local_tokens)
        assert load_async is False
        self.table[req.request_id] = block_ids
        self.scheduler.update_state_after_alloc(req, blocks_of(block_ids), matched)
        req.num_computed_tokens = local_tokens + matched
        return matched

    def step(self, req: SimpleNamespace, num_tokens: int) -> KvTierMetadata:
        """One engine step scheduling `num_tokens` of `req`: load, (forward), save; computed tokens advance."""
        meta = self.scheduler.build_connector_meta(SimpleNamespace(num_scheduled_tokens={req.request_id: num_tokens}))
        self.worker.load(meta)
        self.worker.save(meta)
        req.num_computed_tokens += num_tokens
        return meta

    def block_bytes(self, block_id: int) -> bytes:
        return b"".join(t[block_id].numpy().tobytes() for t in self.kv.values())


@pytest.fixture
def settings(tmp_path):
    return KvTierSettings(backend="disk", path=str(tmp_path / "tier"), breaker_cooldown_s=60)


def _stats(node: Node) -> dict[str, float]:
    total: dict[str, float] = {}
    for side in (node.scheduler, node.worker):
        stats = side.take_stats()
        for key, values in (stats.data if stats else {}).items():
            if not values:
                continue
            total[key] = total.get(key, 0) + (max(values) if key == "evicted_total" and values else sum(values))
    return total


def test_a_prompt_computed_on_one_node_is_loaded_by_another(settings):
    a, b = Node(settings, seed=1), Node(settings, seed=None)
    prompt = request("r1", num_prompt_tokens=4 * BLOCK_SIZE + 5)  # 4 full blocks and a partial one
    assert a.admit(prompt, [5, 6, 7, 8, 9]) == 0
    meta = a.step(prompt, prompt.num_prompt_tokens)
    assert [block_id for _, block_id, _ in meta.stores] == [5, 6, 7, 8], "full prompt blocks only"
    assert a.worker.writer.flush(10)
    assert _stats(a)["stored_blocks"] == 4

    again = request("r2", num_prompt_tokens=prompt.num_prompt_tokens)
    assert b.admit(again, [0, 1, 2, 3, 4]) == 4 * BLOCK_SIZE
    meta = b.step(again, again.num_prompt_tokens - 4 * BLOCK_SIZE)
    assert list(meta.loads["r2"]) == [(i, again.block_hashes[i]) for i in range(4)] and not meta.stores
    assert b.worker.get_block_ids_with_load_errors() == set()
    for src, dst in zip([5, 6, 7, 8], [0, 1, 2, 3]):
        assert b.block_bytes(dst) == a.block_bytes(src)
    stats = _stats(b)
    assert stats["hit_blocks"] == 4 and stats["miss_blocks"] == 0 and stats["loaded_blocks"] == 4
    assert stats["loaded_bytes"] == 4 * LAYERS * HEADS * BLOCK_SIZE * 2 * HEAD * 4


def test_the_last_prompt_token_is_never_claimed(settings):
    a, b = Node(settings, seed=1), Node(settings, seed=None)
    prompt = request("r1", num_prompt_tokens=3 * BLOCK_SIZE)  # exactly 3 blocks
    a.admit(prompt, [0, 1, 2])
    a.step(prompt, prompt.num_prompt_tokens)
    a.worker.writer.flush(10)
    assert b.admit(request("r2", 3 * BLOCK_SIZE), [0, 1, 2]) == 2 * BLOCK_SIZE, "block 3 holds the last token"
    assert b.admit(request("r3", BLOCK_SIZE), [0]) == 0


def test_lookups_start_after_the_local_hit_and_stop_at_the_first_miss(settings):
    a, b = Node(settings, seed=1), Node(settings, seed=None)
    prompt = request("r1", num_prompt_tokens=2 * BLOCK_SIZE + 1)
    a.admit(prompt, [0, 1, 2])
    a.step(prompt, prompt.num_prompt_tokens)
    a.worker.writer.flush(10)
    longer = request("r2", num_prompt_tokens=5 * BLOCK_SIZE + 1)  # the same first two blocks, then new ones
    assert b.admit(longer, [0, 1, 2, 3, 4, 5], local_tokens=BLOCK_SIZE) == BLOCK_SIZE, "block 1 from the tier"
    meta = b.step(longer, longer.num_prompt_tokens - 2 * BLOCK_SIZE)
    assert [i for i, _ in meta.loads["r2"]] == [1]
    assert [block_id for _, block_id, _ in meta.stores] == [2, 3, 4], "what this step computed, not the hits"
    assert _stats(b)["miss_blocks"] == 3


def test_chunked_prefill_stores_each_block_once_it_is_complete(settings):
    a = Node(settings, seed=1)
    prompt = request("r1", num_prompt_tokens=4 * BLOCK_SIZE + 3)
    a.admit(prompt, [0, 1, 2, 3, 4])
    chunks = [[block_id for _, block_id, _ in a.step(prompt, n).stores] for n in (20, 40, 3 * BLOCK_SIZE)]
    assert chunks == [[0], [1, 2], [3]]  # 20, 60, then all 67 tokens: blocks of 16


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_bad_or_vanished_entry_becomes_load_errors_and_the_step_stores_nothing(settings, damage):
    a, b = Node(settings, seed=1), Node(settings, seed=None)
    prompt = request("r1", num_prompt_tokens=4 * BLOCK_SIZE + 1)
    a.admit(prompt, [0, 1, 2, 3, 4])
    a.step(prompt, prompt.num_prompt_tokens)
    a.worker.writer.flush(10)
    other = request("r2", num_prompt_tokens=prompt.num_prompt_tokens)
    assert b.admit(other, [5, 6, 7, 8, 9]) == 4 * BLOCK_SIZE
    path = b.worker.backend.path_of(NS.key(other.block_hashes[1]))
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-100] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[:-1000]))
    else:
        path.unlink()
    meta = b.step(other, other.num_prompt_tokens - 4 * BLOCK_SIZE)
    assert meta.stores == [] or b.worker.writer.flush(10)
    assert b.worker.get_block_ids_with_load_errors() == {6, 7, 8}, "the bad block and those after it"
    assert b.block_bytes(5) == a.block_bytes(0), "the blocks before it were loaded"
    b.worker.writer.flush(10)
    stats = _stats(b)
    assert stats["load_errors"] == 1 and stats.get("corrupt_entries", 0) == (damage != "delete")
    if damage != "delete":
        assert not path.exists(), "a corrupt entry is removed, so the recomputed block is stored again"
    again = b.scheduler.build_connector_meta(SimpleNamespace(num_scheduled_tokens={}))
    b.worker.save(KvTierMetadata(stores=[("r2", 6, other.block_hashes[1])]))  # next step: recomputed, stored
    assert again.loads == {}
    b.worker.writer.flush(10)
    assert b.worker.backend.get(NS.key(other.block_hashes[1])) is not None


def test_the_step_of_a_failed_load_stores_nothing(settings):
    b = Node(settings, seed=None)
    b.worker.load(KvTierMetadata(loads={"x": [(0, b"\x01" * 32)]}))  # not in the tier
    b.worker.save(KvTierMetadata(stores=[("y", 1, b"\x02" * 32)]))
    b.worker.writer.flush(10)
    stats = _stats(b)
    assert stats["load_errors"] == 1 and stats["dropped_stores"] == 1 and "stored_blocks" not in stats


def test_a_tier_that_is_down_costs_one_failed_lookup_then_is_skipped():
    with redis_server() as server:
        url = server.url
    settings = KvTierSettings(backend="redis", url=url, breaker_cooldown_s=60, lookup_budget_s=0.05)
    node = Node(settings, seed=1)
    started_s = time.monotonic()
    for i in range(5):
        assert node.admit(request(f"r{i}", 3 * BLOCK_SIZE + 1), [0, 1, 2, 3]) == 0
    assert time.monotonic() - started_s < 1.0
    node.step(request("s", 3 * BLOCK_SIZE + 1), 1)
    stats = _stats(node)
    assert stats["lookup_errors"] == 1 and stats["lookups"] == 5 and stats["miss_blocks"] == 15


def test_a_hung_redis_times_out_the_lookup_and_recovers_after_the_cooldown():
    with redis_server() as server:
        settings = KvTierSettings(backend="redis", url=server.url, breaker_cooldown_s=0.5, lookup_budget_s=0.05)
        a = Node(settings, seed=1)
        prompt = request("r1", 2 * BLOCK_SIZE + 1)
        a.admit(prompt, [0, 1, 2])
        a.step(prompt, prompt.num_prompt_tokens)
        assert a.worker.writer.flush(10)
        server.pause()
        try:
            started_s = time.monotonic()
            assert a.admit(request("r2", 2 * BLOCK_SIZE + 1), [3, 4, 5]) == 0
            assert time.monotonic() - started_s < 0.5
        finally:
            server.resume()
        assert a.admit(request("r3", 2 * BLOCK_SIZE + 1), [3, 4, 5]) == 0, "breaker open: skipped"
        time.sleep(0.6)
        assert a.admit(request("r4", 2 * BLOCK_SIZE + 1), [3, 4, 5]) == 2 * BLOCK_SIZE, "hits resume"
