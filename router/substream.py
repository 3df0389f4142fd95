"""The streams a single request's answer comes back as (`router.single`): each has `chunks()` (an async
iterator of `Chunk`, each one SSE `data:` payload in vLLM's chunk shape, ending at `[DONE]`) and `aclose()`.

- `SubStream`: one node's opened SSE response (status 200 already received);
- `HeadStream`: an answer made wholly of the prefill node's first token (it ended the answer);
- `ContinuedStream`: the prefill node's first token, then the decode node's continuation spliced on
  (`router.splice`).

Errors: a cut or failed connection is an `UpstreamError` (or its `router.upstream` mapping), an in-band
`error` chunk an `UpstreamError` with code `decode_stream_error`, a chunk that is not JSON `<role>_protocol`.
"""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from typing import Any, AsyncIterator, Callable

import aiohttp

from core.errors import DisaggError, UpstreamError
from core.messages import RequestTiming
from router import splice
from router.chunk import Chunk
from router.upstream import CLIENT_ERRORS, error_from_exception


class SubStream:
    """One opened decode stream: `chunks()` yields its parsed chunks once; `aclose()` closes the connection
    (vLLM aborts a request whose connection closes).

    `on_abandon` runs when the stream is closed before its first chunk: vLLM's API server may have sent its
    response headers without its engine having taken the request yet (the engine gets it when the response
    body is first iterated), and a request the engine never saw never pulls, nor frees, the prefill node's
    blocks. After a first chunk the engine has pulled them (or recomputed the prompt)."""

    def __init__(self, resp: aiohttp.ClientResponse, scope: AsyncExitStack, role: str = "decode",
                 timing: RequestTiming | None = None, sent_s: float | None = None,
                 on_abandon: Callable[[], None] | None = None) -> None:
        self.resp, self.scope, self.role = resp, scope, role
        self.timing, self.sent_s = timing, sent_s  # notes the node's time to its first chunk
        self.on_abandon, self.got_chunk = on_abandon, False

    async def chunks(self) -> AsyncIterator[Chunk]:
        try:
            async for line in self.resp.content:
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments, event names
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    return
                chunk = Chunk(bytes(payload))
                if chunk.mentions(b'"error"') and chunk.data.get("error"):
                    raise _in_band_error(chunk.data["error"])
                self._note_first_chunk()
                self.got_chunk = True
                yield chunk
        except CLIENT_ERRORS as exc:
            raise error_from_exception(self.role, exc) from exc
        except ValueError:  # json.JSONDecodeError included
            raise UpstreamError(f"{self.role} node sent an SSE chunk that is not JSON",
                                code=f"{self.role}_protocol") from None
        raise UpstreamError(f"{self.role} node closed the stream before [DONE]", code=f"{self.role}_stream_cut")

    async def aclose(self) -> None:
        if not self.got_chunk and self.on_abandon is not None:
            self.on_abandon()
            self.on_abandon = None
        await self.scope.aclose()

    def _note_first_chunk(self) -> None:
        if self.timing is not None and self.sent_s is not None and self.timing.decode_ttft_s is None:
            now_s = time.monotonic()
            self.timing.decode_ttft_s = now_s - self.sent_s
            self.timing.decode_first_s = now_s - self.timing.started_s
        self.sent_s = None


def _in_band_error(error: Any) -> DisaggError:
    message = error.get("message") if isinstance(error, dict) else None
    return UpstreamError(f"decode node failed mid-stream: {message or error}", code="decode_stream_error")


class HeadStream:
    """A streamed answer made wholly from the prefill node's answer (its first token ended it)."""

    def __init__(self, head: list[dict[str, Any]]) -> None:
        self.head = head

    async def chunks(self) -> AsyncIterator[Chunk]:
        for chunk in self.head:
            yield Chunk.of(chunk)

    async def aclose(self) -> None:
        return None


class ContinuedStream:
    """The first token's chunks (from the prefill answer), then the decode node's, spliced (router.splice)."""

    def __init__(self, head: list[dict[str, Any]], rest: SubStream, splicer: splice.StreamSplicer) -> None:
        self.head, self.rest, self.splicer = head, rest, splicer

    async def chunks(self) -> AsyncIterator[Chunk]:
        for chunk in self.head:
            yield Chunk.of(chunk)
        async for chunk in self.rest.chunks():
            if (spliced := self.splicer.chunk(chunk)) is not None:
                yield spliced

    async def aclose(self) -> None:
        await self.rest.aclose()
