"""Serving one validated request: colocated (one node) or disaggregated (prefill node → decode node).

The decode node's answer is relayed as it comes: JSON for a unary request, SSE for a streamed one. A
failure after streaming began becomes an SSE `error` event followed by `[DONE]`, never a silent cut.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import AsyncExitStack
from typing import Any, AsyncIterator

import httpx
from fastapi.responses import JSONResponse, StreamingResponse

from disagg.errors import DisaggError, UpstreamError
from disagg.messages import RequestTiming
from router import protocol
from router.config import RouterConfig
from router.metrics import RouterMetrics
from router.registry import Node, NodeRegistry
from router.upstream import NodeFailure, error_from_exception, open_stream, post_json

log = logging.getLogger("router.requests")

PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


class Dispatcher:
    def __init__(self, config: RouterConfig, registry: NodeRegistry, client: httpx.AsyncClient,
                 metrics: RouterMetrics) -> None:
        self.config, self.registry, self.client, self.metrics = config, registry, client, metrics

    async def serve(self, body: dict[str, Any], endpoint: str, timing: RequestTiming) -> Any:
        headers = {"X-Request-Id": timing.request_id}
        if self.config.mode == "disagg":
            body = await self._prefill(body, endpoint, timing, headers)
        node = self.registry.pick("decode")
        if timing.prompt_tokens is not None and node.info is not None and self.config.mode == "disagg":
            timing.kv_bytes = timing.prompt_tokens * node.info.kv_bytes_per_token
        url = node.vllm_url + PATHS[endpoint]
        if body.get("stream"):
            return await self._stream(node, url, body, headers, timing)
        return await self._unary(node, url, body, headers, timing)

    async def _prefill(self, body: dict[str, Any], endpoint: str, timing: RequestTiming,
                       headers: dict[str, str]) -> dict[str, Any]:
        """Run the prefill step; return the body for the decode node."""
        node = self.registry.pick("prefill")
        started_s = time.monotonic()
        data = await self._call(node, "prefill", node.vllm_url + PATHS[endpoint],
                                protocol.prefill_request(body), headers)
        timing.prefill_s = time.monotonic() - started_s
        timing.prompt_tokens = protocol.prompt_tokens(data)
        return protocol.decode_request(body, protocol.kv_transfer_params(data))

    async def _call(self, node: Node, role: str, url: str, body: dict[str, Any],
                    headers: dict[str, str]) -> dict[str, Any]:
        try:
            return await post_json(self.client, role, url, body, headers)
        except NodeFailure as exc:
            self.registry.mark_failed(node, exc.message)
            raise

    async def _unary(self, node: Node, url: str, body: dict[str, Any], headers: dict[str, str],
                     timing: RequestTiming) -> JSONResponse:
        started_s = time.monotonic()
        data = await self._call(node, "decode", url, body, headers)
        timing.decode_s = time.monotonic() - started_s
        _note_usage(data, timing)
        self.finish(timing, "ok")
        return JSONResponse(data, headers=_response_headers(timing))

    async def _stream(self, node: Node, url: str, body: dict[str, Any], headers: dict[str, str],
                      timing: RequestTiming) -> StreamingResponse:
        stack = AsyncExitStack()
        started_s = time.monotonic()
        try:
            resp = await stack.enter_async_context(open_stream(self.client, "decode", url, body, headers))
        except NodeFailure as exc:
            await stack.aclose()
            self.registry.mark_failed(node, exc.message)
            raise
        except BaseException:
            await stack.aclose()
            raise
        return StreamingResponse(self._relay(resp, stack, timing, started_s), media_type="text/event-stream",
                                 headers=_response_headers(timing))

    async def _relay(self, resp: httpx.Response, stack: AsyncExitStack, timing: RequestTiming,
                     started_s: float) -> AsyncIterator[bytes]:
        status = "cancelled"  # what it stays if the client goes away mid-stream
        try:
            done = False
            async for line in resp.aiter_lines():
                done = self._observe_line(line, timing, started_s) or done
                yield (line + "\n").encode()
            if not done:
                raise UpstreamError("decode node closed the stream before [DONE]", code="decode_stream_cut")
            status = "error" if timing.status == "error" else "ok"
        except (httpx.HTTPError, DisaggError) as exc:
            err = exc if isinstance(exc, DisaggError) else error_from_exception("decode", exc)
            status = "error"
            log.warning("request %s failed mid-stream: %s", timing.request_id, err.message)
            yield sse_error(err)
            yield b"data: [DONE]\n\n"
        finally:
            timing.decode_s = time.monotonic() - started_s
            await stack.aclose()
            self.finish(timing, status)

    def _observe_line(self, line: str, timing: RequestTiming, started_s: float) -> bool:
        """Note first token, usage and in-band errors from one SSE line; True at `[DONE]`."""
        if not line.startswith("data:"):
            return False
        payload = line[5:].strip()
        if payload == "[DONE]":
            return True
        if timing.decode_ttft_s is None:
            timing.decode_ttft_s = time.monotonic() - started_s
        if '"usage"' in payload or '"error"' in payload:
            try:
                chunk = json.loads(payload)
            except json.JSONDecodeError:
                return False
            if isinstance(chunk, dict):
                _note_usage(chunk, timing)
                if chunk.get("error"):
                    timing.status = "error"
        return False

    def finish(self, timing: RequestTiming, status: str) -> None:
        timing.status = status
        timing.total_s = time.monotonic() - timing.started_s
        self.metrics.observe(timing)
        log.info("request %s", timing.model_dump_json(exclude_none=True))


def sse_error(err: DisaggError) -> bytes:
    return b"event: error\ndata: " + json.dumps(err.to_openai()).encode() + b"\n\n"


def _note_usage(data: dict[str, Any], timing: RequestTiming) -> None:
    usage = data.get("usage")
    if isinstance(usage, dict):
        timing.prompt_tokens = usage.get("prompt_tokens", timing.prompt_tokens)
        timing.completion_tokens = usage.get("completion_tokens", timing.completion_tokens)


def _response_headers(timing: RequestTiming) -> dict[str, str]:
    return {"Server-Timing": timing.server_timing(), "X-Request-Id": timing.request_id}
