"""Watching a request while a node serves it: past its deadline, or once its client is gone, the work is
cancelled.

Cancelling the work cancels its httpx calls, which closes their connections; vLLM aborts a request
whose connection closes, so its KV blocks are freed. Used only once the client's body has been read
(before that, the ASGI `receive` channel carries the body itself). Work that has finished is never
thrown away: its result (a streaming response holding an upstream stream, say) is always returned.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Awaitable, TypeVar

from starlette.types import Receive

from core.errors import ClientDisconnected, DeadlineExceeded

T = TypeVar("T")


async def until_done(receive: Receive, work: Awaitable[T], deadline_s: float) -> T:
    """`work`'s result; ClientDisconnected or DeadlineExceeded (event-loop time) after cancelling it."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(receive))
    cut = True
    try:
        timeout_s = max(0.0, deadline_s - asyncio.get_running_loop().time())
        await asyncio.wait({task, watcher}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        cut = not task.done()
    finally:
        watcher.cancel()
        if cut:
            task.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
    if not cut:
        return task.result()
    if watcher.done() and not watcher.cancelled():
        raise ClientDisconnected("the client closed the connection before its answer was ready",
                                 code="client_disconnected")
    raise DeadlineExceeded("the request was not served within its deadline", code="request_timeout")


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
