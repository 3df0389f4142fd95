"""One closed error hierarchy, mapped to HTTP status and OpenAI error type in one place.

Every failure the router can report is a `DisaggError` subclass. `to_openai()` renders the body in
OpenAI's published `ErrorResponse` shape `{"error": {"message", "type", "param", "code"}}` (router/schema:
`message` and `type` strings, `param` and `code` a string or null); `http_status` is the status to send.
`type` is one of OpenAI's (`invalid_request_error`, `requests`, `server_error`); `code` is a string naming
the cause (OpenAI's own where one applies: `context_length_exceeded`, `model_not_found`, `invalid_value`,
`invalid_api_key`, `rate_limit_exceeded`, ...) or null, never a number.
"""

from __future__ import annotations

import math
from typing import Any


class DisaggError(Exception):
    """Base of every error disagg reports to a client."""

    http_status = 500
    error_type = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def to_openai(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": None if self.code is None else str(self.code),
            }
        }

    def headers(self) -> dict[str, str]:
        """HTTP headers that go with this error's response."""
        return {}


class BadRequest(DisaggError):
    """The client's request is malformed or asks for something impossible (400)."""

    http_status = 400
    error_type = "invalid_request_error"


class Unauthorized(DisaggError):
    """Missing or wrong API key or cluster token (401). Type and code as OpenAI's own 401."""

    http_status = 401
    error_type = "invalid_request_error"

    def __init__(self, message: str) -> None:
        super().__init__(message, code="invalid_api_key")

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class NotFound(DisaggError):
    """Unknown model or route (404); OpenAI's type for it is `invalid_request_error`."""

    http_status = 404
    error_type = "invalid_request_error"


class PayloadTooLarge(DisaggError):
    """Request body over the configured limit (413)."""

    http_status = 413
    error_type = "invalid_request_error"


class UnsupportedMediaType(DisaggError):
    """A request body that says it is not JSON (415)."""

    http_status = 415
    error_type = "invalid_request_error"


class Overloaded(DisaggError):
    """The router's queue is full (429); the client should retry after `retry_after_s`.

    Type and code as OpenAI's own 429 for a request-rate limit ("requests", "rate_limit_exceeded").
    """

    http_status = 429
    error_type = "requests"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message, code="rate_limit_exceeded")
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class UpstreamError(DisaggError):
    """A node answered with an error or broke the protocol (502)."""

    http_status = 502
    error_type = "server_error"


class NoNodeAvailable(DisaggError):
    """No node of a needed role is healthy (503)."""

    http_status = 503
    error_type = "server_error"


class DeadlineExceeded(DisaggError):
    """The request ran past its deadline (504)."""

    http_status = 504
    error_type = "server_error"


class ClientDisconnected(DisaggError):
    """The client went away before its answer was complete (499, nginx's "client closed request").

    Nobody receives this response; the class exists so the request is cancelled, logged and counted.
    """

    http_status = 499
    error_type = "client_closed_request"


class ClientRelayedError(DisaggError):
    """A 4xx from vLLM about the client's own request, passed through with vLLM's status, message and param.

    vLLM's own `type` (a class name such as "BadRequestError") and integer `code` are not OpenAI's: the
    type becomes `invalid_request_error` (`rate_limit_error`... for a 429: `requests`) and the code is
    classified from the status and message by `relayed_code`.
    """

    error_type = "invalid_request_error"

    def __init__(self, message: str, *, http_status: int, param: str | None = None) -> None:
        super().__init__(message, param=param, code=relayed_code(http_status, message, param))
        self.http_status = http_status
        if http_status == 429:
            self.error_type = "requests"


def relayed_code(http_status: int, message: str, param: str | None) -> str | None:
    """OpenAI's error code for a node's 4xx answer, from what vLLM 0.32 says (see its `create_error_response`
    and renderers/params.py): `context_length_exceeded` for "This model's maximum context length is ..." and
    "... exceeds model's maximum context length ...", `model_not_found` for "The model `x` does not exist.",
    `invalid_value` for any other 400/422 naming a parameter; else null."""
    lowered = message.lower()
    if "maximum context length" in lowered:
        return "context_length_exceeded"
    if http_status == 404 and "does not exist" in lowered:
        return "model_not_found"
    if http_status == 429:
        return "rate_limit_exceeded"
    if http_status in (400, 422) and param:
        return "invalid_value"
    return None


class ConfigError(Exception):
    """A setting or cluster file is invalid. Raised at start-up, never mapped to HTTP."""
