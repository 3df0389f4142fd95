"""Writing a streamed answer to the client as SSE: one `data:` event per chunk, then exactly one `[DONE]`.

The chunks are `router.chunk.Chunk`s (router.fanout's stream of the decode nodes' chunks), written as the
node sent them unless the router changed them. A failure after
streaming began (a node's connection breaks, it closes before `[DONE]`, sends an in-band error, or the
request runs past its deadline) becomes an SSE `error` event in OpenAI's shape followed by `data: [DONE]`,
never a silent cut. If the client goes away, the generator is cancelled or closed: its `finally` closes
the chunk stream (and so every upstream stream: vLLM aborts a request whose client disconnects) and
releases the request's slot.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import AsyncExitStack
from typing import AsyncIterator, Callable

import anyio
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from core.errors import DeadlineExceeded, DisaggError
from core.messages import RequestTiming
from router.chunk import Chunk
from router.metrics import RouterMetrics
from router.upstream import CLIENT_ERRORS, error_from_exception

log = logging.getLogger("router.requests")
DONE = b"data: [DONE]\n\n"


class StreamRelay:
    """One streamed answer: `lines()` is the body of the client's StreamingResponse."""

    def __init__(self, chunks: AsyncIterator[Chunk], scope: AsyncExitStack, timing: RequestTiming,
                 deadline_s: float, metrics: RouterMetrics, finish: Callable[[RequestTiming, str], None]) -> None:
        self.chunks, self.scope, self.timing, self.deadline_s = chunks, scope, timing, deadline_s
        self.metrics, self.finish = metrics, finish
        self.started_s = time.monotonic()
        self._last_chunk_s: float | None = None
        self._inter_token_s = metrics.inter_token_s.labels(timing.mode)
        self._closed = False
        self._completed_status: str | None = None  # set once [DONE] was relayed

    def response(self, headers: dict[str, str]) -> StreamingResponse:
        return _RelayResponse(self, headers)

    async def lines(self) -> AsyncIterator[bytes]:
        status = "client_disconnected"  # what it stays if the client goes away mid-stream
        try:
            while (chunk := await self._next_chunk()) is not None:
                self._observe(chunk)
                yield b"data: " + chunk.encoded() + b"\n\n"
            self._completed_status = "ok"  # complete, even if the client leaves right after reading [DONE]
            yield DONE
            status = "ok"
        except (*CLIENT_ERRORS, DisaggError) as exc:
            err = exc if isinstance(exc, DisaggError) else error_from_exception("decode", exc)
            status = "stream_error"
            self.metrics.failures.labels(err.code or err.error_type).inc()
            log.warning("request %s failed mid-stream: %s", self.timing.request_id, err.message)
            yield sse_error(err)
            yield DONE
        finally:
            await self.close(status)

    async def close(self, status: str) -> None:
        """Close the chunk stream and upstream, release the slot, count the outcome; only the first call counts."""
        if self._closed:
            return
        self._closed = True
        if status == "client_disconnected" and self._completed_status is not None:
            status = self._completed_status
        self.timing.decode_s = time.monotonic() - (self.timing.decode_sent_s or self.started_s)
        with anyio.CancelScope(shield=True):  # close upstream even while being cancelled
            aclose = getattr(self.chunks, "aclose", None)
            if aclose is not None:
                await aclose()
            await self.scope.aclose()
        self.finish(self.timing, status)

    async def _next_chunk(self) -> Chunk | None:
        try:
            async with asyncio.timeout_at(self.deadline_s):
                return await anext(self.chunks, None)
        except TimeoutError:
            raise DeadlineExceeded("the request ran past its deadline while streaming",
                                   code="request_timeout") from None

    def _observe(self, chunk: Chunk) -> None:
        """Note first token, inter-token gaps and usage from one chunk."""
        now_s = time.monotonic()
        if self.timing.ttft_s is None:
            self.timing.ttft_s = now_s - self.timing.started_s
        if self._last_chunk_s is not None:
            self._inter_token_s.observe(now_s - self._last_chunk_s)
        self._last_chunk_s = now_s
        if chunk.mentions(b'"usage"'):
            note_usage(chunk.data, self.timing)


class _RelayResponse(StreamingResponse):
    """A StreamingResponse that closes its relay even if the body was never iterated (client gone early)."""

    def __init__(self, relay: StreamRelay, headers: dict[str, str]) -> None:
        super().__init__(relay.lines(), media_type="text/event-stream", headers=headers)
        self.relay = relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.relay.close("client_disconnected")


def sse_error(err: DisaggError) -> bytes:
    return b"event: error\ndata: " + json.dumps(err.to_openai()).encode() + b"\n\n"


def note_usage(data: dict, timing: RequestTiming) -> None:
    usage = data.get("usage")
    if isinstance(usage, dict):
        timing.prompt_tokens = usage.get("prompt_tokens", timing.prompt_tokens)
        timing.completion_tokens = usage.get("completion_tokens", timing.completion_tokens)
