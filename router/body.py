"""Reading a client's request body within limits, before any of it is parsed.

The body must say it is JSON (or say nothing), and it may not exceed `max_body_bytes`: a declared
`Content-Length` over the limit is refused before a byte is read, and a chunked upload is counted as it
arrives and refused as soon as it passes the limit, so an oversized body is never held in memory.
"""

from __future__ import annotations

from fastapi import Request
from starlette.requests import ClientDisconnect

from core.errors import ClientDisconnected, PayloadTooLarge, UnsupportedMediaType


async def read_body(request: Request, max_body_bytes: int) -> bytes:
    _check_content_type(request.headers.get("content-type"))
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_body_bytes:
        raise PayloadTooLarge(f"request body of {declared} bytes is over the limit of {max_body_bytes}",
                              code="body_too_large")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise PayloadTooLarge(f"request body is over the limit of {max_body_bytes} bytes",
                                      code="body_too_large")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientDisconnected("the client went away while sending its body", code="client_disconnected") from None
    return b"".join(chunks)


def _check_content_type(content_type: str | None) -> None:
    """JSON, JSON-based (`+json`) or unspecified; anything else is 415."""
    if content_type is None:
        return
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type not in ("", "application/json") and not media_type.endswith("+json"):
        raise UnsupportedMediaType(f"Content-Type must be application/json, not {media_type[:100]!r}",
                                   code="unsupported_media_type")
