"""Calls from the router to a node's vLLM server, with every failure turned into a `DisaggError`.

A 4xx from vLLM is about the client's request: it is relayed with vLLM's status, message and param, its
type and code mapped to OpenAI's (`core.errors.ClientRelayedError`). A 5xx,
a 401/403 (the node refused the router's cluster token), a refused connection or a broken stream is the
node's fault: 502, and the node is reported failed.

The HTTP client is aiohttp's (the one module that imports it): measured with `disagg bench router` on a 2-core
host, httpx spent about half of the router's CPU in its connection pool's bookkeeping at 64 streams.
Cancelling a call closes its connection, so vLLM aborts the request and frees its KV.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import aiohttp

from core.errors import ClientRelayedError, DeadlineExceeded, DisaggError, UpstreamError


JSON_HEADERS = {"Content-Type": "application/json"}
# How long an idle pooled connection to a node is kept: under the 5 s after which vLLM's server closes one
# (uvicorn's `timeout_keep_alive`, vLLM's VLLM_HTTP_TIMEOUT_KEEP_ALIVE=5; our nodes' /info server: uvicorn's
# default, also 5 s). Longer, and a connection the server closes just as the router reuses it fails the call
# with "connection reset by peer" (a unit-test loop saw it: a 502, the node marked down; the pool kept 60 s).
NODE_KEEPALIVE_S = 4.0


def encode_json(body: dict[str, Any]) -> bytes:
    """JSON as ASCII: a lone surrogate from the client (valid JSON escape, not UTF-8) stays an escape."""
    return json.dumps(body, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class NodeFailure(UpstreamError):
    """The node failed this request (connection, 5xx, protocol, refused token); another node may serve it.

    `node_down`: the node itself looks broken (unreachable, protocol, token refused), so the registry takes it
    out of rotation until a health check says otherwise. A 5xx answer is not that: the node is alive and
    answering, and one request that makes vLLM fail (hostile input) must not take a node out of rotation.
    """

    def __init__(self, message: str, *, code: str | None = None, node_down: bool = True) -> None:
        super().__init__(message, code=code)
        self.node_down = node_down


def error_from_response(role: str, status: int, content: bytes) -> DisaggError:
    """Map a vLLM error response to our hierarchy, keeping vLLM's message."""
    message, param = _vllm_error_fields(content)
    if status in (401, 403):  # the node refused the router itself (cluster token), not the client's request
        return NodeFailure(f"{role} node refused the router's cluster token (HTTP {status}): {message or ''}",
                           code=f"{role}_unauthorized")
    if 400 <= status < 500:
        return ClientRelayedError(message or f"{role} node rejected the request ({status})",
                                  http_status=status, param=param)
    return NodeFailure(f"{role} node failed with HTTP {status}: {message or 'no message'}",
                       code=f"{role}_http_{status}", node_down=False)


def client_session(request_timeout_s: float, connect_timeout_s: float, headers: dict[str, str],
                   max_connections: int = 1000) -> aiohttp.ClientSession:
    """The router's client for node calls: `headers` on every call (the cluster token), a connection pool
    of `max_connections` whose idle connections close after NODE_KEEPALIVE_S, connecting within
    `connect_timeout_s` and reading within `request_timeout_s`."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=request_timeout_s)
    connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=0, keepalive_timeout=NODE_KEEPALIVE_S)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers, auto_decompress=False)


CLIENT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)  # what a node call may raise besides DisaggError


def error_from_exception(role: str, exc: BaseException, url: str | None = None) -> DisaggError:
    """A failed node call (`CLIENT_ERRORS`) as our error: a read timeout is the deadline, the rest the node's."""
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return DeadlineExceeded(f"{role} node did not answer in time ({type(exc).__name__})", code=f"{role}_timeout")
    where = f" at {_origin(url)}" if url else ""
    return NodeFailure(f"{role} node{where} unreachable or broke the connection: {type(exc).__name__}: {exc}",
                       code=f"{role}_unreachable")


def _origin(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


async def post_json(client: aiohttp.ClientSession, role: str, url: str, body: dict[str, Any],
                    headers: dict[str, str]) -> dict[str, Any]:
    """POST and return the JSON body of a 200; raise a mapped error otherwise."""
    try:
        async with client.post(url, data=encode_json(body), headers={**headers, **JSON_HEADERS}) as resp:
            return _json_of(role, resp.status, await resp.read())
    except CLIENT_ERRORS as exc:
        raise error_from_exception(role, exc, url) from exc


async def get_json(client: aiohttp.ClientSession, role: str, url: str) -> dict[str, Any]:
    try:
        async with client.get(url) as resp:
            return _json_of(role, resp.status, await resp.read())
    except CLIENT_ERRORS as exc:
        raise error_from_exception(role, exc, url) from exc


def _json_of(role: str, status: int, content: bytes) -> dict[str, Any]:
    if status != 200:
        raise error_from_response(role, status, content)
    try:
        data = json.loads(content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise NodeFailure(f"{role} node answered 200 with a body that is not JSON",
                          code=f"{role}_protocol") from None
    if not isinstance(data, dict):
        raise NodeFailure(f"{role} node answered 200 with a JSON {type(data).__name__}", code=f"{role}_protocol")
    return data


@asynccontextmanager
async def open_stream(client: aiohttp.ClientSession, role: str, url: str, body: dict[str, Any],
                      headers: dict[str, str]) -> AsyncIterator[aiohttp.ClientResponse]:
    """POST with a streamed response; yields it only once its status is 200. Left before the end of the
    stream, the connection is closed (vLLM aborts the request)."""
    try:
        resp = await client.post(url, data=encode_json(body), headers={**headers, **JSON_HEADERS})
    except CLIENT_ERRORS as exc:
        raise error_from_exception(role, exc, url) from exc
    try:
        if resp.status != 200:
            try:
                content = await resp.read()
            except CLIENT_ERRORS as exc:
                raise error_from_exception(role, exc, url) from exc
            raise error_from_response(role, resp.status, content)
        yield resp
    finally:
        if resp.content.at_eof():
            resp.release()
        else:
            resp.close()


def _vllm_error_fields(content: bytes) -> tuple[str | None, str | None]:
    """(message, param) from vLLM's error body, in OpenAI's shape or vLLM's older flat one."""
    try:
        data = json.loads(content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        text = content.decode("utf-8", "replace").strip()
        return (text[:500] or None), None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        data = data["error"]
    if not isinstance(data, dict):
        return None, None
    message = data.get("message") or data.get("detail")
    param = data.get("param")
    return (str(message) if message else None), (param if isinstance(param, str) and param else None)
