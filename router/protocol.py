"""vLLM's prefill → decode protocol (DESIGN §2), as pure functions over request and response bodies.

1. The prefill node gets the client's request with `max_tokens=1`, `stream=false` and
   `kv_transfer_params={"do_remote_decode": true, ...}`; every parameter that conflicts with one token or
   with a unary answer is dropped there (PREFILL_DROPPED) and reaches the decode node unchanged.
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


# What vLLM 0.32 refuses next to max_tokens=1 / stream=false, or what makes it produce more than one
# sequence (SamplingParams._verify_args, the OpenAI protocol models' validators): `min_tokens` (must be <=
# max_tokens), `stream_options` (only with stream=true), `n`/`best_of` (one sequence: the split gives each
# choice its own P/D request). Everything else (logprobs, stop, structured outputs, ...) is valid with one
# token and goes to both legs.
PREFILL_DROPPED = ("min_tokens", "stream_options", "n", "best_of")


def prefill_request(body: dict[str, Any]) -> dict[str, Any]:
    """The body sent to the prefill node: one token, not streamed, asking to keep the KV for decode.

    `max_tokens` (and `max_completion_tokens`, which vLLM's chat prefers) become 1; PREFILL_DROPPED go.
    """
    req = {key: value for key, value in body.items() if key not in PREFILL_DROPPED}
    req = copy.deepcopy(req)
    req["max_tokens"] = 1
    if "max_completion_tokens" in req:
        req["max_completion_tokens"] = 1
    req["stream"] = False
    req["kv_transfer_params"] = dict(PREFILL_KV_PARAMS)
    return req


def release_request(body: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A body that makes a decode node pull, and so free, the blocks a prefill kept for `body`'s request:
    the prefill's own body (which that vLLM just accepted) with the decode-side `kv_transfer_params`."""
    req = prefill_request(body)
    req["kv_transfer_params"] = params
    return req


RELEASE_PATH = "/disagg/v1/release_kv"  # a disagg node's release call (node/vllm_middleware.py)


def release_call(request_id: str | None, params: dict[str, Any]) -> dict[str, Any]:
    """The body of a disagg decode node's release call: free the prefill blocks `params` name, computing
    nothing (vLLM's engine treats it as a request refused before it started)."""
    return {"request_id": f"release-{request_id or 'unknown'}-{params.get('remote_request_id')}",
            "kv_transfer_params": params}


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
