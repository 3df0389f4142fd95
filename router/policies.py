"""Routing policies: which healthy node of a role gets a request. An interface plus a registry.

`NodeRegistry.pick` keeps health (only healthy nodes not already tried are candidates) and asks the role's
policy to choose among them. A policy sees the candidates, in the order the router was given them, and the
request's routing facts (`RoutingRequest`, e.g. its prompt for a prefix-aware policy). Adding a policy is a
class here (or anywhere) and a `register` line; `--prefill-policy` / `--decode-policy` name it. A policy that
needs more than the request (the nodes' load, the prefix index) gets it from the `PolicyContext` it is built
with (`RoutingPolicy.build`). Built-in policies beyond round robin live in their own modules, imported at the
end of this one so that they are registered: `prefix_aware` (router.prefix_policy).
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from core.errors import ConfigError

if TYPE_CHECKING:
    from router.registry import Node


@dataclass(frozen=True)
class RoutingRequest:
    """What a policy may know about the request it places (empty for calls that are not requests)."""

    endpoint: str = ""
    body: dict[str, Any] = field(default_factory=dict)
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)  # a policy's per-request work


@dataclass(frozen=True)
class PolicyContext:
    """What a role's policy may use besides the candidates and the request: its role, a load source
    (router.node_load; the router's in-flight count) and, where a role routes by prefix, the prefix index
    with its tokenizer (router.prefix_routing.PrefixRouting)."""

    role: str
    load: Any = None
    prefix: Any = None


class RoutingPolicy(ABC):
    """Chooses one of `candidates` (never empty, all healthy). One instance per role of a router."""

    name: ClassVar[str]

    @classmethod
    def build(cls, context: PolicyContext) -> "RoutingPolicy":
        """An instance for the role `context` describes (most policies need nothing from it)."""
        return cls()

    @abstractmethod
    def pick(self, candidates: list[Node], request: RoutingRequest) -> Node:
        """The node to use."""


class RoundRobin(RoutingPolicy):
    """Each candidate in turn (a counter per role, over whichever nodes are candidates at the time)."""

    name = "round_robin"

    def __init__(self) -> None:
        self._counter = itertools.count()

    def pick(self, candidates: list[Node], request: RoutingRequest) -> Node:
        return candidates[next(self._counter) % len(candidates)]


_POLICIES: dict[str, type[RoutingPolicy]] = {}


def register(policy: type[RoutingPolicy]) -> type[RoutingPolicy]:
    _POLICIES[policy.name] = policy
    return policy


def names() -> tuple[str, ...]:
    return tuple(_POLICIES)


def create(name: str, context: PolicyContext | None = None) -> RoutingPolicy:
    """A new instance of the policy called `name` (built with `context` when given); ConfigError naming the
    known ones otherwise."""
    try:
        policy = _POLICIES[name]
    except KeyError:
        raise ConfigError(f"unknown routing policy {name!r}; known: {', '.join(_POLICIES)}") from None
    return policy.build(context if context is not None else PolicyContext(role=""))


register(RoundRobin)
import router.prefix_policy  # noqa: E402,F401  (registers prefix_aware)
