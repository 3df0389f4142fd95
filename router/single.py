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
import logging
import time
from contextlib import AsyncExitStack
from typing import Any, AsyncIterator, Callable

import aiohttp

from core.errors import ClientRelayedError, DisaggError, NoNodeAvailable, UpstreamError
from core.messages import RequestTiming
from router import continuation, protocol, splice
from router.chunk import Chunk
from router.config import RouterConfig
from router.metrics import RouterMetrics
from router.policies import RoutingRequest
from router.prefill import Prefilled, PrefillStep
from router.registry import Node, NodeRegistry
from router.upstream import CLIENT_ERRORS, NodeFailure, error_from_exception, open_stream, post_json

log = logging.getLogger("router.requests")
RELEASE_TIMEOUT_S = 30.0
PREFILL_GRACE_S = 1.0  # how long a cancelled prefill may still answer, so that its blocks are released


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


class SinglePath:
    def __init__(self, config: RouterConfig, registry: NodeRegistry, client: aiohttp.ClientSession,
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
        if not prefill:  # colocated mode, or a shape served whole
            return await self._on_decode_nodes(body, endpoint, timing, headers, None, stream)
        if continuation.max_tokens_of(body, endpoint) == 1:  # the prefill node's one token is the answer: no KV to keep
            return await self._on_prefill_alone(body, endpoint, timing, headers, stream)
        self.registry.require("decode")  # no prompt is prefilled for a decode node that is not there
        why_not = continuation.reason_not_to_continue(body, endpoint)
        prefilled, fallback = await self._prefill(body, endpoint, timing, headers, continuing=why_not is None)
        if prefilled is None:  # colocated fallback: the decode node gets the request as it came
            return await self._on_decode_nodes(body, endpoint, timing, headers, fallback, stream)
        first = continuation.first_token(prefilled.answer, endpoint) if why_not is None else None
        if first is not None and first.usable:
            return await self._continue(body, endpoint, timing, headers, stream, prefilled, first)
        log.debug("request %s: decode recomputes the first token (%s)", timing.request_id,
                  why_not or "the prefill's first token cannot be split off")
        return await self._decode_or_release(protocol.decode_request(body, prefilled.params), body, endpoint,
                                             timing, headers, stream, prefilled.params)

    async def _continue(self, body: dict[str, Any], endpoint: str, timing: RequestTiming, headers: dict[str, str],
                        stream: bool, prefilled: Prefilled, first: continuation.FirstToken) -> Any:
        """Serve from the prefill node's first token: alone when it ends the answer, else spliced with the
        decode node's continuation (router.continuation, router.splice)."""
        if first.ends_answer:  # EOS or a stop token at once: nothing for a decode node to do
            self._release_later(body, endpoint, prefilled.params, headers)
            if stream:
                return HeadStream(splice.head_chunks(first, endpoint, body))
            return splice.alone(first, endpoint, body)
        decode_body = continuation.decode_request(body, endpoint, first, prefilled.params)
        try:
            result = await self._decode_or_release(decode_body, body, endpoint, timing, headers, stream,
                                                   prefilled.params)
        except ClientRelayedError:  # refused: ask again as colocated serving would be, for vLLM's own 4xx
            return await self._decode_or_release(protocol.decode_request(body, prefilled.params), body, endpoint,
                                                 timing, headers, stream, prefilled.params)
        if stream:
            return ContinuedStream(splice.head_chunks(first, endpoint, body), result,
                                   splice.StreamSplicer(first, endpoint))
        return splice.unary(first, result, endpoint, body)

    async def _decode_or_release(self, decode_body: dict[str, Any], body: dict[str, Any], endpoint: str,
                                 timing: RequestTiming, headers: dict[str, str], stream: bool,
                                 params: dict[str, Any]) -> Any:
        try:
            return await self._on_decode_nodes(decode_body, endpoint, timing, headers, None, stream)
        except BaseException:  # refused (a 4xx from its API server), failed, or cancelled before an answer
            self._release_later(body, endpoint, params, headers)
            raise

    async def _on_prefill_alone(self, body: dict[str, Any], endpoint: str, timing: RequestTiming,
                                headers: dict[str, str], stream: bool) -> Any:
        """A one-token request, served whole by a prefill node (as colocated there: it keeps no KV)."""
        node = self.registry.pick("prefill", request=RoutingRequest(endpoint, body))
        return await self._on_node(node, "prefill", body, endpoint, timing, headers, stream)

    async def _prefill(self, body: dict[str, Any], endpoint: str, timing: RequestTiming,
                       headers: dict[str, str], continuing: bool) -> tuple[Prefilled | None, str | None]:
        """router.prefill's (answer, fallback reason). Cancelled meanwhile, the prefill gets PREFILL_GRACE_S more
        to answer (its answer may be on the wire: vLLM then holds its blocks) and its KV is released."""
        task = asyncio.ensure_future(self.prefill.run(body, endpoint, timing, headers, continuing))
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
            await self._release(body, endpoint, task.result()[0].params, headers)

    async def _on_decode_nodes(self, body: dict[str, Any], endpoint: str, timing: RequestTiming,
                               headers: dict[str, str], fallback: str | None, stream: bool) -> Any:
        tried: set[str] = set()
        routing = RoutingRequest(endpoint, body)
        while True:
            node = self._pick_decode(frozenset(tried), fallback, routing)
            tried.add(node.url)
            try:
                return await self._on_node(node, "decode", body, endpoint, timing, headers, stream)
            except NodeFailure as exc:  # nothing reached the client yet: another decode node may serve it
                if not self.registry.has_healthy("decode", frozenset(tried)):
                    raise
                self.metrics.retries.labels(exc.code or exc.error_type).inc()
                log.warning("request %s: decode on %s failed before any output (%s); retrying on another "
                            "decode node", timing.request_id, node.url, exc.message)

    def _pick_decode(self, exclude: frozenset[str], fallback: str | None,
                     routing: RoutingRequest | None = None) -> Node:
        try:
            return self.registry.pick("decode", exclude, routing)
        except NoNodeAvailable as exc:
            exc.message += f"; prefill: {fallback}" if fallback else ""
            raise

    async def _on_node(self, node: Node, role: str, body: dict[str, Any], endpoint: str, timing: RequestTiming,
                       headers: dict[str, str], stream: bool) -> Any:
        """The node's answer to `body`: its JSON, or its stream opened (status 200)."""
        if "kv_transfer_params" in body and node.info is not None and timing.prompt_tokens is not None:
            timing.kv_bytes = (timing.kv_bytes or 0) + timing.prompt_tokens * node.info.kv_bytes_per_token
        url = node.vllm_url + protocol.PATHS[endpoint]
        started_s = time.monotonic()
        scope = AsyncExitStack()
        scope.callback(node.load.begin())  # router.load: a call in flight to the node until it ends
        try:
            if stream:
                resp = await scope.enter_async_context(open_stream(self.client, role, url, body, headers))
                return SubStream(resp, scope, role, timing if role == "decode" else None, started_s,
                                 self._abandon_release(role, body, endpoint, headers))
            data = await post_json(self.client, role, url, body, headers)
            timing.decode_s = max(timing.decode_s or 0.0, time.monotonic() - started_s)
            await scope.aclose()
            return data
        except BaseException as exc:
            if isinstance(exc, NodeFailure) and exc.node_down:
                self.registry.mark_failed(node, exc.message)
            await scope.aclose()
            raise

    async def _release(self, body: dict[str, Any], endpoint: str, params: dict[str, Any],
                       headers: dict[str, str]) -> None:
        """Have a decode node free the blocks the prefill node holds for a request that will not be decoded:
        a disagg node's release call (its engine tells the connector, which frees them remotely, computing
        nothing); a plain vLLM server (404 there) pulls them with a one-token request instead. A failure is
        logged: the prefill node's lease frees them later."""
        try:
            node = self.registry.pick("decode")
            async with asyncio.timeout(RELEASE_TIMEOUT_S):
                try:
                    await post_json(self.client, "decode", node.vllm_url + protocol.RELEASE_PATH,
                                    protocol.release_call(headers.get("X-Request-Id"), params), headers)
                except ClientRelayedError as exc:
                    if exc.http_status != 404:
                        raise
                    await post_json(self.client, "decode", node.vllm_url + protocol.PATHS[endpoint],
                                    protocol.release_request(body, params), headers)
        except (DisaggError, TimeoutError) as exc:
            log.warning("request %s: could not release its prefilled KV blocks (%s); the prefill node's lease "
                        "frees them", headers.get("X-Request-Id"), getattr(exc, "message", exc))

    def _abandon_release(self, role: str, body: dict[str, Any], endpoint: str,
                         headers: dict[str, str]) -> Callable[[], None] | None:
        """For a P/D decode stream: release its prefill blocks if it is closed before its first chunk."""
        params = body.get("kv_transfer_params")
        if role != "decode" or not isinstance(params, dict) or not params.get("do_remote_prefill"):
            return None
        return lambda: self._release_later(body, endpoint, params, headers)

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
