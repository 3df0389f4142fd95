"""Serving one admitted, validated request: colocated (one node) or disaggregated (prefill → decode).

The decode node's answer is relayed as it comes: JSON for a unary request, SSE for a streamed one (see
`router.relay`). In disagg mode the decode side is checked first, so no prompt is prefilled for a
decode node that is not there; the prefill step itself retries and falls back (see `router.prefill`).
"""

from __future__ import annotations

import logging
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi.responses import JSONResponse, StreamingResponse

from core.errors import NoNodeAvailable
from core.messages import RequestTiming
from router import protocol
from router.config import RouterConfig
from router.metrics import RouterMetrics
from router.prefill import PrefillStep
from router.registry import Node, NodeRegistry
from router.relay import StreamRelay, note_usage
from router.upstream import NodeFailure, open_stream, post_json

log = logging.getLogger("router.requests")


@dataclass
class Call:
    """One admitted request on its way through the router."""

    timing: RequestTiming
    deadline_s: float  # event-loop time by which its last byte must be out
    scope: AsyncExitStack = field(default_factory=AsyncExitStack)  # its slot, its upstream stream

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Request-Id": self.timing.request_id}


class Dispatcher:
    def __init__(self, config: RouterConfig, registry: NodeRegistry, client: httpx.AsyncClient,
                 metrics: RouterMetrics) -> None:
        self.config, self.registry, self.client, self.metrics = config, registry, client, metrics
        self.prefill = PrefillStep(config, registry, client, metrics)

    async def serve(self, body: dict[str, Any], endpoint: str, call: Call) -> Any:
        timing, fallback = call.timing, None
        if self.config.mode == "disagg":
            self.registry.require("decode")
            body, fallback = await self.prefill.run(body, endpoint, timing, call.headers)
        tried: set[str] = set()
        while True:
            node = self._pick_decode(frozenset(tried), fallback)
            tried.add(node.url)
            try:
                return await self._on_decode(node, body, endpoint, call, fallback)
            except NodeFailure as exc:  # nothing reached the client yet: another decode node may serve it
                if not self.registry.has_healthy("decode", frozenset(tried)):
                    raise
                self.metrics.retries.labels(exc.code or exc.error_type).inc()
                log.warning("request %s: decode on %s failed before any output (%s); retrying on another "
                            "decode node", timing.request_id, node.url, exc.message)

    def _pick_decode(self, exclude: frozenset[str], fallback: str | None) -> Node:
        try:
            return self.registry.pick("decode", exclude)
        except NoNodeAvailable as exc:
            exc.message += f"; prefill: {fallback}" if fallback else ""
            raise

    async def _on_decode(self, node: Node, body: dict[str, Any], endpoint: str, call: Call,
                         fallback: str | None) -> Any:
        timing = call.timing
        if timing.prompt_tokens is not None and node.info is not None and fallback is None:
            timing.kv_bytes = timing.prompt_tokens * node.info.kv_bytes_per_token
        url = node.vllm_url + protocol.PATHS[endpoint]
        if body.get("stream"):
            return await self._stream(node, url, body, call)
        return await self._unary(node, url, body, call)

    async def _unary(self, node: Node, url: str, body: dict[str, Any], call: Call) -> JSONResponse:
        started_s = time.monotonic()
        try:
            data = await post_json(self.client, "decode", url, body, call.headers)
        except NodeFailure as exc:
            if exc.node_down:
                self.registry.mark_failed(node, exc.message)
            raise
        call.timing.decode_s = time.monotonic() - started_s
        note_usage(data, call.timing)
        self.finish(call.timing, "ok")
        return JSONResponse(data, headers=_response_headers(call.timing))

    async def _stream(self, node: Node, url: str, body: dict[str, Any], call: Call) -> StreamingResponse:
        """Open the decode node's stream; from here the relay owns the request's scope (slot included)."""
        try:  # on failure the slot stays in the call's scope, for a retry or for `_serve` to release
            resp = await call.scope.enter_async_context(open_stream(self.client, "decode", url, body, call.headers))
        except NodeFailure as exc:
            if exc.node_down:
                self.registry.mark_failed(node, exc.message)
            raise
        scope = call.scope.pop_all()
        relay = StreamRelay(resp, scope, call.timing, call.deadline_s, self.metrics, self.finish)
        return relay.response(_response_headers(call.timing))

    def finish(self, timing: RequestTiming, status: str) -> None:
        """Log and count one request's outcome, once."""
        timing.status = status
        timing.total_s = time.monotonic() - timing.started_s
        self.metrics.observe(timing)
        log.info("request %s", timing.model_dump_json(exclude_none=True))


def _response_headers(timing: RequestTiming) -> dict[str, str]:
    return {"Server-Timing": timing.server_timing(), "X-Request-Id": timing.request_id}
