"""Routing policies: an interface and a registry; the node registry keeps health and asks the policy."""

from __future__ import annotations

import pytest

from core.errors import ConfigError, NoNodeAvailable
from router import policies
from router.policies import RoundRobin, RoutingPolicy, RoutingRequest
from router.registry import Node, NodeRegistry


def registry(policy: RoutingPolicy | None = None) -> NodeRegistry:
    nodes = [Node("decode", f"http://d{i}", healthy=True) for i in range(3)] + [Node("prefill", "http://p0")]
    return NodeRegistry(nodes, {"prefill": RoundRobin(), "decode": policy or RoundRobin()})


def test_round_robin_takes_each_healthy_node_in_turn_and_skips_unhealthy_and_excluded():
    nodes = registry()
    assert [nodes.pick("decode").url for _ in range(4)] == ["http://d0", "http://d1", "http://d2", "http://d0"]
    nodes.nodes[1].healthy = False
    assert {nodes.pick("decode", frozenset({"http://d0"})).url for _ in range(3)} == {"http://d2"}
    with pytest.raises(NoNodeAvailable, match="no healthy prefill node"):
        nodes.pick("prefill")


def test_a_policy_registered_elsewhere_chooses_among_the_healthy_candidates():
    class Last(RoutingPolicy):
        name = "last-for-test"
        seen: list[list[str]] = []

        def pick(self, candidates, request):
            Last.seen.append([n.url for n in candidates])
            return candidates[-1]

    policies.register(Last)
    try:
        nodes = registry(policies.create("last-for-test"))
        nodes.nodes[2].healthy = False
        assert nodes.pick("decode", request=RoutingRequest("chat", {"model": "m"})).url == "http://d1"
        assert Last.seen == [["http://d0", "http://d1"]]
        assert "last-for-test" in policies.names()
    finally:
        policies._POLICIES.pop("last-for-test")


def test_an_unknown_policy_is_a_config_error_naming_the_known_ones():
    with pytest.raises(ConfigError, match="round_robin"):
        policies.create("fastest-first")
