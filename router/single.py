"""The single-request P/D path: one prompt, one choice, served by prefill then decode (or by one node alone).

This is the one place that knows how a single request is served; `router.fanout` splits what it cannot carry
and merges what it returns, knowing only its two results:

- `unary(...)`: the decode node's JSON body (a dict in vLLM's response shape);
- `open_stream(...)`: a `SubStream` whose `chunks()` yields each SSE `data:` payload parsed (dicts, in
  vLLM's chunk shape), ending at `[DONE]`. It is opened (prefill done, the decode node's 200 received) before
  it is returned, so a request the decode node refuses is an error before any byte reaches the client.

Disagg (`prefill=True`): the prefill node gets `protocol.prefill_request`, the decode node the body plus the
prefill's `kv_transfer_params` (`router.prefill` retries and falls back). A decode node that fails before any
output is retried on another. The prefill node holds the prompt's KV blocks until the decode node pulls
them. When the decode call ends without an answer (refused by the decode node's API server with a 4xx about
a parameter the one-token prefill did not use, e.g. `min_tokens` > `max_tokens`; failed; or cancelled
because a sibling part failed or the client left), the decode engine may never have seen the request, so
nobody would pull the blocks before the lease ends: the router sends `protocol.release_request` to a decode
node, which pulls them and so frees them. If the engine had seen it (and released the blocks on abort), that
pull finds nothing and the decode node recomputes the one-token prompt instead (kv_load_failure_policy
"recompute"): a cost on a failure path, never a leak. A part cancelled during its prefill lets the prefill
answer for PREFILL_GRACE_S more (the engine may have finished it, and then holds its blocks) and releases
them; a prefill still running after that is aborted (see README, "Request shapes in disagg mode").
Local (`prefill=False`): the body goes to a decode node as it is (colocated mode, or a shape served whole).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import AsyncExitStack
from typing import Any, AsyncIterator

import httpx

from core.errors import DisaggError, NoNodeAvailable, UpstreamError
from core.messages import RequestTiming
from router import protocol
from router.config import RouterConfig
from router.metrics import RouterMetrics
from router.prefill import PrefillStep
from router.registry import Node, NodeRegistry
from router.upstream import NodeFailure, error_from_exception, open_stream, post_json

log = logging.getLogger("router.requests")
RELEASE_TIMEOUT_S = 30.0
PREFILL_GRACE_S = 1.0  # how long a cancelled prefill may still answer, so that its blocks are released


class SubStream:
    """One opened decode stream: `chunks()` yields its parsed chunks once; `aclose()` closes the connection
    (vLLM aborts a request whose connection closes)."""

    def __init__(self, resp: httpx.Response, scope: AsyncExitStack) -> None:
        self.resp, self.scope = resp, scope

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        try:
            async for line in self.resp.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments, event names
                payload = line[5:].strip()
                if payload == "[DONE]":
                    return
                chunk = json.loads(payload)
                if isinstance(chunk, dict) and chunk.get("error"):
                    raise _in_band_error(chunk["error"])
                yield chunk
        except httpx.HTTPError as exc:
            raise error_from_exception("decode", exc) from exc
        except json.JSONDecodeError:
            raise UpstreamError("decode node sent an SSE chunk that is not JSON", code="decode_protocol") from None
        raise UpstreamError("decode node closed the stream before [DONE]", code="decode_stream_cut")

    async def aclose(self) -> None:
        await self.scope.aclose()


def _in_band_error(error: Any) -> DisaggError:
    message = error.get("message") if isinstance(error, dict) else None
    return UpstreamError(f"decode node failed mid-stream: {message or error}", code="decode_stream_error")


class SinglePath:
    def __init__(self, config: RouterConfig, registry: NodeRegistry, client: httpx.AsyncClient,
                 metrics: RouterMetrics) -> None:
        self.config, self.registry, self.client, self.metrics = config, registry, client, metrics
        self.prefill = PrefillStep(config, registry, client, metrics)

    async def unary(self, body: dict[str, Any], endpoint: str, timing: RequestTiming, headers: dict[str, str],
                    prefill: bool) -> dict[str, Any]:
        """The decode node's JSON answer to one single request."""
        return await self._serve(body, endpoint, timing, headers, prefill, stream=False)

    async def open_stream(self, body: dict[str, Any], endpoint: str, timing: RequestTiming,
                          headers: dict[str, str], prefill: bool) -> SubStream:
        """One single request's decode stream, opened (status 200); the caller closes it."""
        return await self._serve(body, endpoint, timing, headers, prefill, stream=True)

    async def _serve(self, body: dict[str, Any], endpoint: str, timing: RequestTiming, headers: dict[str, str],
                     prefill: bool, stream: bool) -> Any:
        params = None
        if prefill:
            self.registry.require("decode")  # no prompt is prefilled for a decode node that is not there
            params, fallback = await self._prefill(body, endpoint, timing, headers)
            decode_body = body if params is None else protocol.decode_request(body, params)
        else:
            decode_body, fallback = body, None
        try:
            return await self._on_decode_nodes(decode_body, endpoint, timing, headers, fallback, stream)
        except BaseException:  # refused (a 4xx from its API server), failed, or cancelled before an answer
            if params is not None:
                self._release_later(body, endpoint, params, headers)
            raise

    async def _prefill(self, body: dict[str, Any], endpoint: str, timing: RequestTiming,
                       headers: dict[str, str]) -> tuple[dict[str, Any] | None, str | None]:
        """router.prefill's (params, fallback reason). Cancelled meanwhile, the prefill gets PREFILL_GRACE_S more
        to answer (its answer may be on the wire: vLLM then holds its blocks) and its KV is released."""
        task = asyncio.ensure_future(self.prefill.run(body, endpoint, timing, headers))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            _in_background(self._release_when_prefilled(task, body, endpoint, headers))
            raise

    async def _release_when_prefilled(self, task: asyncio.Future, body: dict[str, Any], endpoint: str,
                                      headers: dict[str, str]) -> None:
        done, _ = await asyncio.wait({task}, timeout=PREFILL_GRACE_S)
        if not done:
            task.cancel()  # still computing: its connection closes, vLLM aborts it and frees its blocks
            await asyncio.gather(task, return_exceptions=True)
        elif not task.exception() and task.result()[0] is not None:
            await self._release(body, endpoint, task.result()[0], headers)

    async def _on_decode_nodes(self, body: dict[str, Any], endpoint: str, timing: RequestTiming,
                               headers: dict[str, str], fallback: str | None, stream: bool) -> Any:
        tried: set[str] = set()
        while True:
            node = self._pick_decode(frozenset(tried), fallback)
            tried.add(node.url)
            try:
                return await self._on_decode(node, body, endpoint, timing, headers, stream)
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

    async def _on_decode(self, node: Node, body: dict[str, Any], endpoint: str, timing: RequestTiming,
                         headers: dict[str, str], stream: bool) -> Any:
        if "kv_transfer_params" in body and node.info is not None and timing.prompt_tokens is not None:
            timing.kv_bytes = (timing.kv_bytes or 0) + timing.prompt_tokens * node.info.kv_bytes_per_token
        url = node.vllm_url + protocol.PATHS[endpoint]
        started_s = time.monotonic()
        scope = AsyncExitStack()
        try:
            if stream:
                resp = await scope.enter_async_context(open_stream(self.client, "decode", url, body, headers))
                return SubStream(resp, scope)
            data = await post_json(self.client, "decode", url, body, headers)
            timing.decode_s = max(timing.decode_s or 0.0, time.monotonic() - started_s)
            return data
        except NodeFailure as exc:
            if exc.node_down:
                self.registry.mark_failed(node, exc.message)
            raise
        except BaseException:
            await scope.aclose()
            raise

    async def _release(self, body: dict[str, Any], endpoint: str, params: dict[str, Any],
                       headers: dict[str, str]) -> None:
        """Have a decode node pull and so free the blocks the prefill node holds for a request that will not
        be decoded; a failure is logged (the prefill node's lease frees them later)."""
        try:
            node = self.registry.pick("decode")
            async with asyncio.timeout(RELEASE_TIMEOUT_S):
                await post_json(self.client, "decode", node.vllm_url + protocol.PATHS[endpoint],
                                protocol.release_request(body, params), headers)
        except (DisaggError, TimeoutError) as exc:
            log.warning("request %s: could not release its prefilled KV blocks (%s); the prefill node's lease "
                        "frees them", headers.get("X-Request-Id"), getattr(exc, "message", exc))

    def _release_later(self, body: dict[str, Any], endpoint: str, params: dict[str, Any],
                       headers: dict[str, str]) -> None:
        """`_release` in a task of its own: the request's own cancellation (a sibling part failed, the client
        left) must not cut it."""
        _in_background(self._release(body, endpoint, params, headers))


_BACKGROUND: set[asyncio.Task] = set()  # releases still running after their request was cancelled


def _in_background(work: Any) -> None:
    task = asyncio.get_running_loop().create_task(work)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)
