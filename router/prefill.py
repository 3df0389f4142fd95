"""The prefill step of a disaggregated request: retry on another prefill node, else colocated fallback.

Each healthy prefill node is tried at most once, round robin. A node that fails (refused or broken
connection, a 5xx, an answer without `kv_transfer_params`) is reported, counted, and the next one is
tried (counted in `disagg_router_retries_total{reason}`). When none succeeds and `colocated_fallback` is
on, the decode node gets the client's request as it came and prefills it itself: logged, and counted in
`disagg_router_fallbacks_total{reason}`; when it is off, the last failure is the request's answer. A 4xx is
about the client's request and a timeout means the deadline is spent: both end the request, no retry.
Nothing has been sent to the client yet, so a retry can never duplicate output.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from core.errors import NoNodeAvailable, UpstreamError
from core.messages import RequestTiming
from router import continuation, protocol
from router.config import RouterConfig
from router.decider import estimate_prompt_tokens
from router.metrics import RouterMetrics
from router.policies import RoutingRequest
from router.registry import Node, NodeRegistry
from router.upstream import NodeFailure, post_json

log = logging.getLogger("router.requests")


@dataclass(frozen=True)
class Prefilled:
    """A prefill node's answer: its JSON body (one token) and the decode side's `kv_transfer_params`."""

    answer: dict[str, Any]
    params: dict[str, Any]
    node: Node


class PrefillStep:
    def __init__(self, config: RouterConfig, registry: NodeRegistry, client: aiohttp.ClientSession,
                 metrics: RouterMetrics) -> None:
        self.config, self.registry, self.client, self.metrics = config, registry, client, metrics

    async def run(self, body: dict[str, Any], endpoint: str, timing: RequestTiming, headers: dict[str, str],
                  continuing: bool = False) -> tuple[Prefilled | None, str | None]:
        """(the prefill node's answer, None) after a prefill; (None, reason) on fallback, when the decode node
        gets the request as it came and prefills it itself. `continuing`: the router will continue from the
        first token (router.continuation), so the prefill is asked for the token ids too."""
        tried: set[str] = set()
        last: UpstreamError | None = None
        routing = RoutingRequest(endpoint, body)
        while True:
            try:
                node = self.registry.pick("prefill", frozenset(tried), routing)
            except NoNodeAvailable as exc:
                return None, self._fall_back(timing, last, exc)
            tried.add(node.url)
            if last is not None:
                self.metrics.retries.labels(last.code or last.error_type).inc()
            try:
                return await self._on(node, body, endpoint, timing, headers, continuing), None
            except UpstreamError as exc:
                last = exc
                log.warning("request %s: prefill on %s failed: %s", timing.request_id, node.url, exc.message)

    async def _on(self, node: Node, body: dict[str, Any], endpoint: str, timing: RequestTiming,
                  headers: dict[str, str], continuing: bool) -> Prefilled:
        started_s = time.monotonic()
        prefill_body = protocol.prefill_request(body)
        if continuing:
            prefill_body = continuation.prefill_request(prefill_body, body)
        end = node.load.begin(estimate_prompt_tokens(body, self.config.decider.chars_per_token))  # router.load
        try:
            data = await post_json(self.client, "prefill", node.vllm_url + protocol.PATHS[endpoint],
                                   prefill_body, headers)
        except NodeFailure as exc:
            if exc.node_down:
                self.registry.mark_failed(node, exc.message)
            raise
        finally:
            end()
        params = protocol.kv_transfer_params(data)
        timing.prefill_s = max(timing.prefill_s or 0.0, time.monotonic() - started_s)  # the slowest part's
        timing.prompt_tokens = protocol.prompt_tokens(data)
        return Prefilled(answer=data, params=params, node=node)

    def _fall_back(self, timing: RequestTiming, last: UpstreamError | None, none_left: NoNodeAvailable) -> str:
        """Why the decode node serves the request alone; raises when fallback is off."""
        if not self.config.colocated_fallback:
            raise last or none_left
        reason = (last.code if last else none_left.code) or "unknown"
        self.metrics.fallbacks.labels(reason).inc()
        log.warning("request %s: no prefill node could serve (%s); the decode node prefills it (colocated "
                    "fallback)", timing.request_id, last.message if last else none_left.message)
        return reason
