"""The router's API key: `Authorization: Bearer KEY` on every /v1 route, when a key is configured.

A FastAPI dependency on the /v1 routes, so it runs before any body is read and before anything is sent
to a node. /health and /metrics stay open (they are for the cluster's operators and monitors). Keys are
compared in constant time.
"""

from __future__ import annotations

import hmac

from fastapi import Request
from fastapi.security import HTTPBearer

from core.errors import Unauthorized

_bearer = HTTPBearer(auto_error=False, description="the router's --api-key, when it has one")


async def require_api_key(request: Request) -> None:
    """Raise `Unauthorized` unless the request carries the configured key (or none is configured)."""
    expected = request.app.state.config.api_key
    credentials = await _bearer(request)
    if expected is None:
        return
    if credentials is None:
        _count(request)
        raise Unauthorized("missing API key: send the header 'Authorization: Bearer YOUR_KEY'")
    if not hmac.compare_digest(credentials.credentials.encode(),
                               expected.encode()):
        _count(request)
        raise Unauthorized("incorrect API key provided")


def _count(request: Request) -> None:
    app = request.app.state
    endpoint = request.url.path.removeprefix("/v1/").replace("chat/completions", "chat")
    app.metrics.requests.labels(endpoint, app.config.mode, "error_401").inc()
