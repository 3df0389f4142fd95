"""The single-request P/D path: one prompt, one choice, served by prefill then decode (or by one node alone).

This is the one place that knows how a single request is served; `router.fanout` splits what it cannot carry
and merges what it returns, knowing only its two results:

- `unary(...)`: the decode node's JSON body (a dict in vLLM's response shape);
- `open_stream(...)`: a stream (`router.substream`: the decode node's `SubStream`, or the prefill node's
  first token alone or spliced before the decode node's) whose `chunks()` yields each SSE `data:` payload
  (`Chunk`, in vLLM's chunk shape), ending at `[DONE]`. It is opened (prefill done, the decode node's 200
  received) before it is returned, so a request the decode node refuses is an error before any byte reaches
  the client.

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
from typing import Any, Callable

import aiohttp

from core.errors import ClientRelayedError, DisaggError, NoNodeAvailable
from core.messages import RequestTiming
from router import continuation, protocol, splice
from router.config import RouterConfig
from router.metrics import RouterMetrics
from router.policies import RoutingRequest
from router.prefill import Prefilled, PrefillStep
from router.registry import Node, NodeRegistry
from router.substream import ContinuedStream, HeadStream, SubStream
from router.upstream import NodeFailure, open_stream, post_json

log = logging.getLogger("router.requests")
RELEASE_TIMEOUT_S = 30.0
PREFILL_GRACE_S = 1.0  # how long a cancelled prefill may still answer, so that its blocks are released


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
        if role == "decode":
            timing.decode_sent_s = min(started_s, timing.decode_sent_s or started_s)
        scope = AsyncExitStack()
        scope.callback(node.load.begin())  # router.load: a call in flight to the node until it ends
        try:
            if stream:
                resp = await scope.enter_async_context(open_stream(self.client, role, url, body, headers))
                return SubStream(resp, scope, role, timing if role == "decode" else None, started_s,
                                 self._abandon_release(role, body, endpoint, headers))
            data = await post_json(self.client, role, url, body, headers)
            if role == "decode":  # the first decode call sent to the last answer, as a stream's (router.relay)
                timing.decode_s = max(timing.decode_s or 0.0, time.monotonic() - timing.decode_sent_s)
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
