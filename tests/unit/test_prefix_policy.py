"""The prefix_aware policy: the node holding the longest cached prefix wins, load weighs against it by the
stated formula, ties and unknown prompts go round robin, every placement is counted."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
from prometheus_client import CollectorRegistry

from core.errors import ConfigError
from router import block_hash, policies
from router.config import PrefixSettings
from router.policies import PolicyContext, RoutingRequest
from router.prefix_routing import PrefixRouting
from router.registry import Node, NodeRegistry
from tests.support.kv_event_publisher import stored

pytestmark = pytest.mark.timeout(60)
PROMPT = list(range(100, 116))  # four blocks of 4 tokens
CHAIN = block_hash.block_hashes(PROMPT, 4)



@contextmanager
def in_flight(node):
    """One router call in flight to `node` (router.load.NodeLoad.begin ... end)."""
    end = node.load.begin()
    try:
        yield
    finally:
        end()

def setup(load_weight: float = 1.0, nodes: int = 2) -> tuple[NodeRegistry, PrefixRouting]:
    registry = NodeRegistry([Node("prefill", f"http://p{i}", healthy=True) for i in range(nodes)])
    prefix = PrefixRouting(PrefixSettings(load_weight=load_weight), registry, ("prefill",), CollectorRegistry())
    registry.policies["prefill"] = policies.create("prefix_aware", PolicyContext("prefill", registry.loads, prefix))
    return registry, prefix


def hold(prefix: PrefixRouting, node: str, blocks: int) -> None:
    from router.kv_event_wire import decode_batch
    import msgspec

    batch = decode_batch(msgspec.msgpack.encode([0.0, [stored(CHAIN[:blocks], 4)], 0]))
    prefix.index.apply(node, batch.events)


def pick(registry: NodeRegistry, prompt=PROMPT, **extra) -> str:
    return registry.pick("prefill", request=RoutingRequest("completions", {"prompt": prompt, **extra})).url


def routes(prefix: PrefixRouting, node: str, outcome: str) -> float:
    return prefix.metrics.routes.labels("prefill", node, outcome)._value.get()


def test_the_node_with_the_longer_cached_prefix_wins_and_is_counted():
    registry, prefix = setup()
    hold(prefix, "http://p0", 1)
    hold(prefix, "http://p1", 3)
    assert [pick(registry) for _ in range(3)] == ["http://p1"] * 3
    assert routes(prefix, "http://p1", "hit") == 3
    assert prefix.metrics.cached_tokens.labels("prefill", "http://p1")._value.get() == 3 * 12
    assert prefix.metrics.prompt_tokens.labels("prefill", "http://p1")._value.get() == 3 * 16
    assert pick(registry, prompt=list(range(16))) in ("http://p0", "http://p1")  # another prompt: a miss
    assert routes(prefix, "http://p0", "miss") + routes(prefix, "http://p1", "miss") == 1


def test_load_weighs_against_the_cached_prefix_by_the_stated_formula():
    registry, prefix = setup(load_weight=1.0)
    hold(prefix, "http://p0", 1)  # cost 12 + load
    hold(prefix, "http://p1", 3)  # cost 4 + load
    busy = registry.nodes[1]
    with in_flight(busy):  # one request on p1: + 1 x 16 (no mean yet: this prompt's length)
        assert pick(registry) == "http://p0"  # 12 < 4 + 16
        assert routes(prefix, "http://p0", "load") == 1
    assert registry.policies["prefill"].mean_uncached_tokens == 12  # what the request placed on p0 had left to compute
    with in_flight(busy):
        assert pick(registry) == "http://p0"  # 12 < 4 + 12
    registry2, prefix2 = setup(load_weight=0.0)
    hold(prefix2, "http://p1", 3)
    with in_flight(registry2.nodes[1]), in_flight(registry2.nodes[1]):
        assert pick(registry2) == "http://p1"  # weight 0: load ignored


def test_ties_and_prompts_without_tokens_or_events_take_turns():
    registry, prefix = setup(nodes=3)
    assert [pick(registry) for _ in range(3)] == ["http://p0", "http://p1", "http://p2"]  # no events yet
    assert routes(prefix, "http://p0", "no_index") == 1
    text = [pick(registry, prompt="some text") for _ in range(3)]  # no tokenizer: by load, round robin
    assert sorted(text) == ["http://p0", "http://p1", "http://p2"] and routes(prefix, "http://p0", "no_tokenizer") == 1
    hold(prefix, "http://p0", 2)
    hold(prefix, "http://p2", 2)
    assert {pick(registry) for _ in range(4)} == {"http://p0", "http://p2"}  # equal prefixes: turns


def test_the_prompt_is_hashed_once_per_request_across_retries(monkeypatch):
    registry, prefix = setup()
    hold(prefix, "http://p0", 2)
    hold(prefix, "http://p1", 2)
    calls = []
    real = block_hash.block_hashes
    monkeypatch.setattr(block_hash, "block_hashes", lambda *a, **k: calls.append(1) or real(*a, **k))
    request = RoutingRequest("completions", {"prompt": PROMPT})
    first = registry.pick("prefill", request=request)
    second = registry.pick("prefill", frozenset({first.url}), request)
    assert {first.url, second.url} == {"http://p0", "http://p1"} and len(calls) == 1


def test_cache_salt_changes_the_chain():
    registry, prefix = setup()
    hold(prefix, "http://p1", 4)
    assert pick(registry, cache_salt="tenant-a") in ("http://p0", "http://p1")
    assert routes(prefix, "http://p0", "miss") + routes(prefix, "http://p1", "miss") == 1


def test_prefix_aware_without_its_context_is_a_config_error():
    with pytest.raises(ConfigError, match="prefix"):
        policies.create("prefix_aware")
