"""How busy each node is, as a routing policy weighs it: a small interface, and the source every router has.

`LoadSource.load(node)` is a number of requests on the node now (fractional is fine). `NodeLoads` reads it
from each node's `router.load.NodeLoad`: the requests the node reported in its vLLM metrics (when the router
scrapes them), kept current by the router's own calls in flight to it, or those calls alone (a call counts
from its start to its answer, or a stream's end). Anything with `load(node) -> float` plugs in the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from router.registry import Node


class LoadSource(Protocol):
    def load(self, node: Node) -> float:
        """Requests on `node` now (>= 0)."""


class NodeLoads:
    """`LoadSource` over each node's `NodeLoad` (router.load): its outstanding requests."""

    def load(self, node: Node) -> float:
        return node.load.outstanding
