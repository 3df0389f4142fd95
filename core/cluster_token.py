"""The cluster token on the nodes' HTTP endpoints: who may ask a node's vLLM server or supervisor for work.

One secret shared by the router and the nodes of a cluster (`--cluster-token-file`, else the
`DISAGG_CLUSTER_TOKEN` environment variable; never a command-line value, which every user of a host can
read). The same token proves our TCP KV transport's PULL and RELEASE frames (`transport/tcp/auth.py`).

- Node side: `ClusterTokenMiddleware` wraps the vLLM OpenAI server (inside `node.vllm_middleware`, loaded
  through vLLM's `--middleware`,
  reading the token from the server's environment) and the supervisor's `/info` app. Every path needs
  `Authorization: Bearer TOKEN` except `OPEN_PATHS` (liveness and Prometheus scraping, which start no
  work); anything else gets 401 in OpenAI's error shape before vLLM sees it. This covers what vLLM's own
  `--api-key` leaves open (`/invocations`, `/tokenize`, `/pause`, ...).
- Router side: `bearer_headers(token)` is what the router sends with every node call.

Tokens are compared in constant time. The token does not encrypt anything: keep node ports on the
cluster network (`--host`, `--kv-host`, `--kv-bind-host`).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from pathlib import Path
from typing import Any, Awaitable, Callable

from core.errors import ConfigError, Unauthorized

log = logging.getLogger(__name__)
CLUSTER_TOKEN_ENV = "DISAGG_CLUSTER_TOKEN"  # the token for processes that get no file; never a CLI value
OPEN_PATHS = frozenset({"/health", "/metrics", "/ping"})

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[..., Awaitable[Any]], Callable[..., Awaitable[Any]]], Awaitable[None]]


def read_token(path: Path | None, env: dict[str, str] | None = None) -> str | None:
    """The token from `path`, else from $DISAGG_CLUSTER_TOKEN; None when neither is set.

    Raises ConfigError for a file that cannot be read or is empty; warns when others may read it.
    """
    if path is None:
        return (os.environ if env is None else env).get(CLUSTER_TOKEN_ENV, "").strip() or None
    try:
        token = path.expanduser().read_text().strip()
        mode = path.expanduser().stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cluster token file {path}: {exc}") from None
    if not token:
        raise ConfigError(f"cluster token file {path} is empty")
    if not token.isascii() or not token.isprintable() or " " in token:
        raise ConfigError(f"cluster token file {path}: the token must be printable ASCII without spaces")
    if mode & 0o077:
        log.warning("cluster token file %s is readable by other users (chmod 600 it)", path)
    return token


def bearer_headers(token: str | None) -> dict[str, str]:
    """Headers the router sends to nodes: the token as a bearer credential, or nothing without one."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def token_matches(authorization: str | None, token: str) -> bool:
    """Whether an `Authorization` header value carries `token` (constant-time comparison)."""
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


class ClusterTokenMiddleware:
    """Pure ASGI middleware: 401 unless the request proves the cluster token (see the module docstring).

    Built with no token argument by vLLM's `--middleware`, it reads $DISAGG_CLUSTER_TOKEN; without one
    it lets everything through (a node started without a token is open, as before).
    """

    def __init__(self, app: ASGIApp, token: str | None = None) -> None:
        self.app = app
        self.token = token if token is not None else read_token(None)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if self.token is None or scope["type"] not in ("http", "websocket") or _is_open(scope):
            await self.app(scope, receive, send)
            return
        if token_matches(_header(scope, b"authorization"), self.token):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await _send_unauthorized(send, _header(scope, b"authorization") is None)


def _is_open(scope: Scope) -> bool:
    path = scope["path"].removeprefix(scope.get("root_path", "")).rstrip("/") or "/"
    return scope.get("method") == "OPTIONS" or path in OPEN_PATHS


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def _send_unauthorized(send: Any, missing: bool) -> None:
    error = Unauthorized("missing cluster token: nodes answer only the cluster's router (Authorization: Bearer)"
                         if missing else "incorrect cluster token")
    body = json.dumps(error.to_openai()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers().items()]
    await send({"type": "http.response.start", "status": error.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
