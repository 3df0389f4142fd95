"""The fan-out layer: one client request served as the single requests of its `Split` (router.merge), run
concurrently, their answers merged into one OpenAI response.

It knows nothing of how a single request is served: it calls a `Single` (router.single.SinglePath) and
consumes what it returns, a JSON body or an opened stream of parsed chunks.

One failure fails the whole request, loudly: the first part to fail (in part order among those that failed)
is the answer (unary: its status and body; streamed, before any byte was sent: the same; after: an SSE
`error` event then `[DONE]`, by router.relay), and every other part is cancelled at once: its node calls
are closed, so vLLM aborts them and frees their KV (router.single releases the blocks of a part cancelled
between its prefill and its decode call).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, Awaitable, Callable, Protocol, TypeVar

import anyio

from core.errors import DisaggError
from router.chunk import Chunk
from router.merge import ChunkMerger, Split, merge_bodies

T = TypeVar("T")
QUEUE_CHUNKS = 64  # chunks the parts may run ahead of the client before they wait


class Stream(Protocol):
    def chunks(self) -> AsyncIterator[Chunk]: ...

    async def aclose(self) -> None: ...


class Single(Protocol):
    """How one single request is served (router.single.SinglePath, bound to one client request)."""

    async def unary(self, body: dict[str, Any]) -> dict[str, Any]: ...

    async def open_stream(self, body: dict[str, Any]) -> Stream: ...


async def unary(single: Single, split: Split) -> dict[str, Any]:
    """The merged JSON answer of every part."""
    bodies = await run_all([single.unary(part.body) for part in split.parts])
    return merge_bodies(split, bodies)


async def open_stream(single: Single, split: Split) -> AsyncIterator[Chunk]:
    """Every part's stream opened (so a refusal is still an HTTP error), then their merged chunks: an async
    generator whose `aclose()` closes every part's stream. One part's chunks pass through as they come."""
    streams = await run_all([single.open_stream(part.body) for part in split.parts],
                            discard=lambda stream: stream.aclose())
    if not split.is_split:
        return _alone(streams[0])
    return _merged(streams, ChunkMerger(split))


async def _alone(stream: Stream) -> AsyncIterator[Chunk]:
    try:
        async for chunk in stream.chunks():
            yield chunk
    finally:
        with anyio.CancelScope(shield=True):
            await stream.aclose()


async def run_all(calls: list[Awaitable[T]], discard: Callable[[T], Awaitable[Any]] | None = None) -> list[T]:
    """The results of `calls`, run concurrently, in order; at the first failure every other call is
    cancelled, the results already in are passed to `discard`, and that failure is raised."""
    if len(calls) == 1:
        return [await calls[0]]
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
        if failed or not all(t.done() for t in tasks):  # a failure, or we are being cancelled
            await _cancel_all(tasks, discard)
    if failed:
        raise failed[0].exception()  # type: ignore[misc]
    return [t.result() for t in tasks]


async def _cancel_all(tasks: list[asyncio.Task], discard: Callable[[Any], Awaitable[Any]] | None) -> None:
    with anyio.CancelScope(shield=True):
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if discard is not None:
            for task in tasks:
                if not task.cancelled() and task.exception() is None:
                    with contextlib.suppress(Exception):
                        await discard(task.result())


async def _merged(streams: list[Stream], merger: ChunkMerger) -> AsyncIterator[dict[str, Any]]:
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue(QUEUE_CHUNKS)
    end = object()

    async def pump(position: int, stream: Stream) -> None:
        try:
            async for chunk in stream.chunks():
                await queue.put((position, chunk))
            await queue.put((position, end))
        except (DisaggError, Exception) as exc:  # handed to the consumer, which fails the whole request
            await queue.put((position, exc))

    pumps = [asyncio.ensure_future(pump(i, stream)) for i, stream in enumerate(streams)]
    try:
        running = len(pumps)
        while running:
            position, item = await queue.get()
            if item is end:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            elif (chunk := merger.chunk(position, item.data)) is not None:
                yield Chunk.of(chunk)
        if (usage := merger.final_usage_chunk()) is not None:
            yield Chunk.of(usage)
    finally:  # shielded: the server's (anyio) cancellation would cut the clean-up at its first await
        with anyio.CancelScope(shield=True):
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for stream in streams:
                await stream.aclose()
