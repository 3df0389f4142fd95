"""What a disagg node adds to its vLLM server: one ASGI middleware, loaded with vLLM's `--middleware`.

    --middleware node.vllm_middleware.DisaggNodeMiddleware

- The cluster token (`core.cluster_token.ClusterTokenMiddleware`): without `Authorization: Bearer TOKEN`,
  401 before vLLM sees the request (a no-op when the node has no token).
- `POST /disagg/v1/release_kv` `{"request_id": str, "kv_transfer_params": {...}}` → 200 `{"released": true}`:
  free the blocks a prefill node keeps for a request that will not be decoded (the router served it from the
  prefill node's first token, or it was cancelled), computing nothing. It hands the parameters to vLLM's own
  path for a P/D request refused before it started (`AsyncLLM.notify_kv_transfer_request_rejected`, vLLM 0.32:
  a pre-aborted request whose connector `request_finished` frees the remote blocks: NIXL notifies the prefill
  node, our tcp connector sends it RELEASE). Asked of a decode node. 400 for a body that is not that shape;
  404 from a plain vLLM server (the router then falls back to a one-token pull).

It runs inside vLLM's API server process: it imports no vLLM, and reaches the engine through the app's state.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from core.cluster_token import ASGIApp, ClusterTokenMiddleware, Scope

log = logging.getLogger(__name__)
RELEASE_PATH = "/disagg/v1/release_kv"
MAX_BODY_BYTES = 64 * 1024


class DisaggNodeMiddleware:
    """The cluster token check around the release call (see the module docstring)."""

    def __init__(self, app: ASGIApp, token: str | None = None) -> None:
        self.app = ClusterTokenMiddleware(_ReleaseRoute(app), token)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


class _ReleaseRoute:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope["path"].rstrip("/") != RELEASE_PATH:
            await self.app(scope, receive, send)
            return
        request = _parse(await _read_body(receive))
        if request is None:
            await _answer(send, 400, {"error": {"message": "expected {\"request_id\": str, \"kv_transfer_params\": "
                                                "object}", "type": "invalid_request_error", "param": None,
                                                "code": "invalid_value"}})
            return
        engine = getattr(getattr(scope.get("app"), "state", None), "engine_client", None)
        if engine is None:
            await _answer(send, 503, {"error": {"message": "the engine is not ready", "type": "server_error",
                                                "param": None, "code": None}})
            return
        request_id, params = request
        await engine.notify_kv_transfer_request_rejected(request_id, params)
        log.debug("released the prefill blocks of %s", params.get("remote_request_id"))
        await _answer(send, 200, {"released": True})


def _parse(raw: bytes) -> tuple[str, dict[str, Any]] | None:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict) or not isinstance(body.get("request_id"), str):
        return None
    params = body.get("kv_transfer_params")
    if not isinstance(params, dict) or not params.get("do_remote_prefill"):
        return None
    return body["request_id"], params


async def _read_body(receive: Any) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > MAX_BODY_BYTES or not message.get("more_body"):
            return b"".join(chunks)[:MAX_BODY_BYTES + 1]


async def _answer(send: Any, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
