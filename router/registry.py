"""The router's view of its nodes: where each one's vLLM server is, whether it is healthy, what it costs.

A node URL names either a disagg node supervisor (it answers `GET /info` with a `NodeInfo`) or a plain
vLLM server started by hand (it does not; its own URL is then where requests go). A background task
checks every node each `health_interval_s`; requests only go to healthy nodes, and among those each role's
routing policy chooses (`router.policies`; round robin unless told otherwise).

A node that refuses connections or answers with an error is down at once. A node that is merely slow
to answer (busy with a long prefill on a small machine) is down only after `SLOW_CHECKS_TO_DOWN`
timed-out checks in a row: busy is not dead.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import httpx
from pydantic import ValidationError

from core.errors import NoNodeAvailable
from core.messages import NodeInfo
from router.load import NodeLoad
from router.node_load import NodeLoads
from router.policies import RoundRobin, RoutingPolicy, RoutingRequest

log = logging.getLogger(__name__)
SLOW_CHECKS_TO_DOWN = 3


@dataclass
class Node:
    """One node as the router knows it. Mutated only by `NodeRegistry.check` (`load`: by router.load)."""

    role: str
    url: str
    info: NodeInfo | None = None
    healthy: bool = False
    last_error: str | None = None
    slow_checks: int = 0  # consecutive health checks that timed out
    load: NodeLoad = field(default_factory=NodeLoad)  # how busy it is (router.load; mutated there)

    @property
    def vllm_url(self) -> str:
        return self.info.vllm_url if self.info else self.url

    def describe(self) -> dict:
        return {
            "role": self.role,
            "url": self.url,
            "vllm_url": self.vllm_url,
            "healthy": self.healthy,
            "last_error": self.last_error,
            "info": self.info.model_dump() if self.info else None,
            "load": self.load.describe(),
        }


@dataclass
class NodeRegistry:
    nodes: list[Node]
    policies: dict[str, RoutingPolicy] = field(default_factory=lambda: {"prefill": RoundRobin(), "decode": RoundRobin()})
    loads: NodeLoads = field(default_factory=NodeLoads)  # each node's load as policies read it (router.node_load)

    @classmethod
    def from_urls(cls, prefill_urls: tuple[str, ...], decode_urls: tuple[str, ...],
                  policies: dict[str, RoutingPolicy] | None = None) -> "NodeRegistry":
        nodes = [Node("prefill", u.rstrip("/")) for u in prefill_urls]
        nodes += [Node("decode", u.rstrip("/")) for u in decode_urls]
        return cls(nodes, policies) if policies is not None else cls(nodes)

    def pick(self, role: str, exclude: frozenset[str] = frozenset(),
             request: RoutingRequest | None = None) -> Node:
        """A healthy node of `role` whose URL is not in `exclude`, as the role's policy chooses;
        NoNodeAvailable if none."""
        return self.policies[role].pick(self.require(role, exclude), request or RoutingRequest())

    def require(self, role: str, exclude: frozenset[str] = frozenset()) -> list[Node]:
        """The healthy nodes of `role` not in `exclude`; NoNodeAvailable naming each node and why not."""
        healthy = [n for n in self.nodes if n.role == role and n.healthy and n.url not in exclude]
        if not healthy:
            errors = "; ".join(f"{n.url}: {n.last_error or ('failed' if n.url in exclude else 'not ready')}"
                               for n in self.nodes if n.role == role)
            raise NoNodeAvailable(f"no healthy {role} node ({errors})", code=f"no_{role}_node")
        return healthy

    def has_healthy(self, role: str, exclude: frozenset[str] = frozenset()) -> bool:
        return any(n.healthy for n in self.nodes if n.role == role and n.url not in exclude)

    def mark_failed(self, node: Node, reason: str) -> None:
        """A request saw the node fail; keep it out until the next health check says otherwise."""
        if node.healthy:
            log.warning("node %s (%s) marked down: %s", node.url, node.role, reason)
        node.healthy, node.last_error = False, reason

    async def check_all(self, client: httpx.AsyncClient) -> None:
        await asyncio.gather(*(self.check(client, n) for n in self.nodes))

    async def check(self, client: httpx.AsyncClient, node: Node) -> None:
        was_healthy = node.healthy
        try:
            node.info = await _fetch_info(client, node.url)
            if node.info is not None and not node.info.engine_ready:
                raise RuntimeError("engine still loading")
            resp = await client.get(f"{node.vllm_url}/health")
            if resp.status_code != 200:
                raise RuntimeError(f"/health answered {resp.status_code}")
            node.healthy, node.last_error, node.slow_checks = True, None, 0
        except httpx.TimeoutException as exc:
            node.slow_checks += 1
            node.last_error = f"health check timed out {node.slow_checks}x ({type(exc).__name__})"
            node.healthy = node.healthy and node.slow_checks < SLOW_CHECKS_TO_DOWN
        except (httpx.HTTPError, RuntimeError) as exc:
            node.healthy, node.last_error = False, str(exc) or type(exc).__name__
        if node.healthy != was_healthy:
            log.info("node %s (%s) is %s", node.url, node.role, "up" if node.healthy else f"down: {node.last_error}")

    async def run_health_loop(self, client: httpx.AsyncClient, interval_s: float) -> None:
        while True:
            await self.check_all(client)
            await asyncio.sleep(interval_s)


async def _fetch_info(client: httpx.AsyncClient, url: str) -> NodeInfo | None:
    """The supervisor's NodeInfo, or None when `url` is a plain vLLM server (no /info route)."""
    resp = await client.get(f"{url}/info")
    if resp.status_code == 404:
        return None
    if resp.status_code == 401:
        raise RuntimeError(f"{url}/info refused the router's cluster token (401): give the router the nodes' "
                           "token (--cluster-token-file or $DISAGG_CLUSTER_TOKEN)")
    resp.raise_for_status()
    try:
        return NodeInfo.model_validate_json(resp.content)
    except ValidationError as exc:
        raise RuntimeError(f"{url}/info is not a disagg NodeInfo: {exc.error_count()} errors") from None
