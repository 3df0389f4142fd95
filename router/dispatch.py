"""Serving one admitted, validated client request: choose how it is carried, serve it, answer in HTTP.

- Colocated mode: the request goes as it came to one node, which handles batches and `n` itself.
- Disagg mode: `router.merge.split` turns it into single P/D requests (one, unless it has several prompts
  or `n` > 1), `router.fanout` runs them over `router.single.SinglePath` and merges their answers. A shape
  vLLM's P/D protocol cannot carry at all (beam search, which makes its own requests inside vLLM) is
  served whole by a decode node, as colocated (LOCAL_REASONS), and so is a request `router.decider` decides
  to prefill locally.

The answer is JSON for a unary request, SSE for a streamed one (`router.relay`).
"""

from __future__ import annotations

import logging
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from fastapi.responses import JSONResponse, StreamingResponse

from core.messages import RequestTiming
from router import fanout
from router.config import RouterConfig
from router.decider import Decider
from router.merge import Part, Split, split
from router.metrics import RouterMetrics
from router.registry import NodeRegistry
from router.relay import StreamRelay, note_usage
from router.single import SinglePath
from router.substream import SubStream

log = logging.getLogger("router.requests")
LOCAL_REASONS = {"use_beam_search": "beam search runs its own requests inside vLLM"}


@dataclass
class Call:
    """One admitted request on its way through the router."""

    timing: RequestTiming
    deadline_s: float  # event-loop time by which its last byte must be out
    scope: AsyncExitStack = field(default_factory=AsyncExitStack)  # its slot, its upstream streams

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Request-Id": self.timing.request_id}


@dataclass
class _BoundSingle:
    """SinglePath for one client request (fanout.Single): its timing, headers and mode."""

    path: SinglePath
    endpoint: str
    call: Call
    prefill: bool

    async def unary(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.path.unary(body, self.endpoint, self.call.timing, self.call.headers, self.prefill)

    async def open_stream(self, body: dict[str, Any]) -> SubStream:
        return await self.path.open_stream(body, self.endpoint, self.call.timing, self.call.headers, self.prefill)


class Dispatcher:
    def __init__(self, config: RouterConfig, registry: NodeRegistry, client: aiohttp.ClientSession,
                 metrics: RouterMetrics) -> None:
        self.config, self.registry, self.client, self.metrics = config, registry, client, metrics
        self.single = SinglePath(config, registry, client, metrics)
        self.decider = Decider(config.decider, registry, metrics.decisions)

    async def serve(self, body: dict[str, Any], endpoint: str, call: Call) -> Any:
        local = self.config.mode == "colocated" or not self.decider.decide(  # router.decider: remote or local
            body, call.timing, self._local_reason(body, call)).remote
        plan = Split([Part(0, 0, body)], 1) if local else split(body, endpoint)
        single = _BoundSingle(self.single, endpoint, call, prefill=not local)
        if body.get("stream"):
            return await self._stream(single, plan, call)
        data = await fanout.unary(single, plan)
        note_usage(data, call.timing)
        self.finish(call.timing, "ok")
        return JSONResponse(data, headers=_response_headers(call.timing))

    def _local_reason(self, body: dict[str, Any], call: Call) -> str | None:
        for key, reason in LOCAL_REASONS.items():
            if body.get(key):
                log.info("request %s: served whole by a decode node: %s", call.timing.request_id, reason)
                return reason
        return None

    async def _stream(self, single: _BoundSingle, plan: Split, call: Call) -> StreamingResponse:
        """Open every part's stream; from here the relay owns the request's scope (slot included)."""
        chunks = await fanout.open_stream(single, plan)
        scope = call.scope.pop_all()
        relay = StreamRelay(chunks, scope, call.timing, call.deadline_s, self.metrics, self.finish)
        return relay.response(_response_headers(call.timing))

    def finish(self, timing: RequestTiming, status: str) -> None:
        """Log and count one request's outcome, once."""
        timing.status = status
        timing.total_s = time.monotonic() - timing.started_s
        self.metrics.observe(timing)
        log.info("request %s", timing.model_dump_json(exclude_none=True))


def _response_headers(timing: RequestTiming) -> dict[str, str]:
    return {"Server-Timing": timing.server_timing(), "X-Request-Id": timing.request_id}
