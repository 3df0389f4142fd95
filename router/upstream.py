"""Calls from the router to a node's vLLM server, with every failure turned into a `DisaggError`.

A 4xx from vLLM is about the client's request: it is relayed with vLLM's status, message and param, its
type and code mapped to OpenAI's (`core.errors.ClientRelayedError`). A 5xx,
a 401/403 (the node refused the router's cluster token), a refused connection or a broken stream is the
node's fault: 502, and the node is reported failed.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import httpx

from core.errors import ClientRelayedError, DeadlineExceeded, DisaggError, UpstreamError


JSON_HEADERS = {"Content-Type": "application/json"}


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


def error_from_exception(role: str, exc: httpx.HTTPError) -> DisaggError:
    if isinstance(exc, (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout)):
        return DeadlineExceeded(f"{role} node did not answer in time ({type(exc).__name__})",
                                code=f"{role}_timeout")
    return NodeFailure(f"{role} node{_url_of(exc)} unreachable or broke the connection: {type(exc).__name__}: "
                       f"{exc}", code=f"{role}_unreachable")


def _url_of(exc: httpx.HTTPError) -> str:
    """' at URL' for an error with a request, else ''."""
    try:
        url = exc.request.url
    except RuntimeError:  # httpx raises when the error has no request
        return ""
    return f" at {url.scheme}://{url.netloc.decode()}"


async def post_json(client: httpx.AsyncClient, role: str, url: str, body: dict[str, Any],
                    headers: dict[str, str]) -> dict[str, Any]:
    """POST and return the JSON body of a 200; raise a mapped error otherwise."""
    try:
        resp = await client.post(url, content=encode_json(body), headers={**headers, **JSON_HEADERS})
    except httpx.HTTPError as exc:
        raise error_from_exception(role, exc) from exc
    return _json_of(role, resp)


async def get_json(client: httpx.AsyncClient, role: str, url: str) -> dict[str, Any]:
    try:
        resp = await client.get(url)
    except httpx.HTTPError as exc:
        raise error_from_exception(role, exc) from exc
    return _json_of(role, resp)


def _json_of(role: str, resp: httpx.Response) -> dict[str, Any]:
    if resp.status_code != 200:
        raise error_from_response(role, resp.status_code, resp.content)
    try:
        data = resp.json()
    except json.JSONDecodeError:
        raise NodeFailure(f"{role} node answered 200 with a body that is not JSON",
                          code=f"{role}_protocol") from None
    if not isinstance(data, dict):
        raise NodeFailure(f"{role} node answered 200 with a JSON {type(data).__name__}", code=f"{role}_protocol")
    return data


@asynccontextmanager
async def open_stream(client: httpx.AsyncClient, role: str, url: str, body: dict[str, Any],
                      headers: dict[str, str]) -> AsyncIterator[httpx.Response]:
    """POST with a streamed response; yields it only once its status is 200."""
    request = client.build_request("POST", url, content=encode_json(body), headers={**headers, **JSON_HEADERS})
    try:
        resp = await client.send(request, stream=True)
    except httpx.HTTPError as exc:
        raise error_from_exception(role, exc) from exc
    try:
        if resp.status_code != 200:
            content = await resp.aread()
            raise error_from_response(role, resp.status_code, content)
        yield resp
    finally:
        await resp.aclose()


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
