"""The router's KV event subscriber: finds each node's event publisher and keeps one stream per node.

For every node of the roles routed by prefix (`roles`), each `interval_s` while the node is healthy, it
asks the node's vLLM server where it publishes (`GET /kv_event_sources`, vLLM's own route: the resolved
`--kv-events-config` per data-parallel rank, e.g. `{"0": {"endpoint": "tcp://10.0.0.11:40123",
"replay_endpoint": "tcp://10.0.0.11:40124", "topic": "kv", ...}}`) and runs a `NodeEventStream` for it
(router.kv_event_stream). A node that publishes nothing (`{}`: started without KV events) gets no stream,
and the prefix policy scores it 0. An endpoint that binds every interface (`tcp://*:5557`) is reached at the
node's own host. When a node's endpoints or its process id (a disagg node's `/info` pid) change, the node
restarted: its index is emptied (`node_restarted`) and a new stream subscribes. Only data-parallel rank 0 is
followed (a node with several ranks is scored by rank 0's cache).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlparse

import httpx

from router.kv_event_stream import EventSource, NodeEventStream, new_context
from router.prefix_index import PrefixIndex
from router.prefix_metrics import PrefixMetrics
from router.registry import Node, NodeRegistry

log = logging.getLogger(__name__)
SOURCES_PATH = "/kv_event_sources"


@dataclass
class _Running:
    source: EventSource
    pid: int | None
    task: asyncio.Task


def source_from(sources: Any, node_url: str) -> EventSource | None:
    """Rank 0's publisher from a `/kv_event_sources` answer (None when the node publishes nothing), with a
    wildcard host replaced by the node's."""
    if not isinstance(sources, dict) or not sources:
        return None
    rank0 = sources.get("0", sources.get(0))
    if not isinstance(rank0, dict) or not rank0.get("enable_kv_cache_events", True):
        return None
    endpoint = rank0.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint.startswith("tcp://"):
        return None  # ipc:// or inproc:// endpoints are for processes on the node itself
    host = urlparse(node_url).hostname or "127.0.0.1"
    replay = rank0.get("replay_endpoint")
    return EventSource(endpoint=_reachable(endpoint, host),
                       replay_endpoint=_reachable(replay, host) if isinstance(replay, str) else None,
                       topic=str(rank0.get("topic") or ""))


def _reachable(endpoint: str, host: str) -> str:
    address, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    if address in ("*", "0.0.0.0", "[::]", "::"):
        address = f"[{host}]" if ":" in host else host
    return f"tcp://{address}:{port}"


class KvEventSubscriber:
    """One event stream per published node of `roles`, kept current by `run()` (cancel it to stop)."""

    def __init__(self, registry: NodeRegistry, roles: tuple[str, ...], index: PrefixIndex,
                 metrics: PrefixMetrics, on_batch: Callable[[str], None] | None = None) -> None:
        self.registry, self.roles, self.index, self.metrics = registry, roles, index, metrics
        self.on_batch = on_batch
        self._context = new_context()
        self._running: dict[str, _Running] = {}

    async def run(self, client: httpx.AsyncClient, interval_s: float) -> None:
        try:
            while True:
                await asyncio.gather(*(self.refresh(client, n) for n in self.registry.nodes
                                       if n.role in self.roles and n.healthy))
                await asyncio.sleep(interval_s)
        finally:
            await self.aclose()

    async def refresh(self, client: httpx.AsyncClient, node: Node) -> None:
        """Start, keep or restart `node`'s stream after asking where it publishes."""
        try:
            resp = await client.get(node.vllm_url + SOURCES_PATH)
            source = source_from(resp.json(), node.vllm_url) if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError) as exc:
            log.debug("KV event sources of %s: %s", node.url, exc)
            return  # the health check says what is wrong; keep what runs
        pid = node.info.pid if node.info else None
        running = self._running.get(node.url)
        same = running is not None and (running.source, running.pid) == (source, pid)
        if same and not running.task.done():
            return
        if running is not None:
            await self._stop(node.url)
            self.index.clear(node.url, "stream_failed" if same else "node_restarted")
        if source is None:
            return
        stream = NodeEventStream(node.url, source, self.index, self.metrics, self._context, self.on_batch)
        self._running[node.url] = _Running(source, pid, asyncio.create_task(self._guarded(stream)))

    async def _guarded(self, stream: NodeEventStream) -> None:
        try:
            await stream.run()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - logged; the next refresh starts a new stream
            log.exception("KV event stream of %s failed", stream.node)

    async def _stop(self, node_url: str) -> None:
        running = self._running.pop(node_url, None)
        if running is not None:
            running.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await running.task

    def streaming(self, node_url: str) -> bool:
        running = self._running.get(node_url)
        return running is not None and not running.task.done()

    async def aclose(self) -> None:
        for url in list(self._running):
            await self._stop(url)
        self._context.destroy(linger=0)
