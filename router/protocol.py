"""vLLM's prefill → decode protocol (DESIGN §2), as pure functions over request and response bodies.

1. The prefill node gets the client's request with `max_tokens=1`, `stream=false` and
   `kv_transfer_params={"do_remote_decode": true, ...}`.
2. Its response carries `kv_transfer_params` (remote block ids, engine id, host, port).
3. The decode node gets the original request plus those `kv_transfer_params`; its connector pulls the
   blocks and it decodes.
"""

from __future__ import annotations

import copy
from typing import Any

from core.errors import UpstreamError

PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}  # vLLM's routes by endpoint

PREFILL_KV_PARAMS: dict[str, Any] = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}


def prefill_request(body: dict[str, Any]) -> dict[str, Any]:
    """The body sent to the prefill node: one token, not streamed, asking to keep the KV for decode."""
    req = copy.deepcopy(body)
    req["max_tokens"] = 1
    if "max_completion_tokens" in req:
        req["max_completion_tokens"] = 1
    req["stream"] = False
    req.pop("stream_options", None)
    req["kv_transfer_params"] = dict(PREFILL_KV_PARAMS)
    return req


def kv_transfer_params(prefill_response: dict[str, Any]) -> dict[str, Any]:
    """The decode-side parameters out of the prefill node's JSON response."""
    params = prefill_response.get("kv_transfer_params")
    if not isinstance(params, dict) or not params:
        raise UpstreamError(
            "prefill node returned no kv_transfer_params: is it started with a KV connector as kv_producer?",
            code="prefill_protocol",
        )
    return params


def decode_request(body: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The body sent to the decode node: the client's own request plus the prefill's KV parameters."""
    req = copy.deepcopy(body)
    req["kv_transfer_params"] = params
    return req


def prompt_tokens(response: dict[str, Any]) -> int | None:
    usage = response.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
        return usage["prompt_tokens"]
    return None
