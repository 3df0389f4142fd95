"""How busy each node is, as a routing policy weighs it: a small interface and the router's own count.

`LoadSource.load(node)` is a number of requests on the node now (fractional is fine). `InFlight` is the
source every router has: the requests this router has sent to the node and not yet seen end (a prefill
call until its answer; a decode or colocated call until its answer or the end of its stream). A source
built from the nodes' own metrics (running + waiting requests, as vLLM exports them) plugs in the same
way: anything with `load(node) -> float`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Protocol

if TYPE_CHECKING:
    from router.registry import Node


class LoadSource(Protocol):
    def load(self, node: Node) -> float:
        """Requests on `node` now (>= 0)."""


class InFlight:
    """Requests in flight per node URL, counted by `track` around each node call."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    @contextmanager
    def track(self, node: Node) -> Iterator[None]:
        self._counts[node.url] = self._counts.get(node.url, 0) + 1
        try:
            yield
        finally:
            self._counts[node.url] -= 1

    def load(self, node: Node) -> float:
        return float(self._counts.get(node.url, 0))
