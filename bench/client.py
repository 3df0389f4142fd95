"""One streamed OpenAI request, timed: build the body, read the SSE stream, classify the failure.

Failure kinds (`RequestResult.error_kind`): `http_<status>`, `timeout` (past `timeout_s`),
`connection` (connect/reset/protocol errors), `stream_error` (an SSE `error` event or an `{"error": …}`
chunk), `incomplete_stream` (ended without `[DONE]`), `bad_chunk` (a data line that is not JSON),
`empty_stream` (200 and `[DONE]` but no tokens), and `cancelled` (cut off by the run's deadline).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.datasets import Prompt
from bench.metrics import CANCELLED, RequestResult, parse_server_timing, server_timing_kv_bytes

COMPLETIONS = "/v1/completions"
CHAT_COMPLETIONS = "/v1/chat/completions"
ENDPOINTS = (COMPLETIONS, CHAT_COMPLETIONS)


class StreamFailure(Exception):
    """Raised inside the stream reader; carries the failure kind."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class _StreamState:
    chunk_offsets_s: list[float] = field(default_factory=list)
    usage_output_tokens: int | None = None
    usage_prompt_tokens: int | None = None
    server_timing_ms: dict[str, float] = field(default_factory=dict)
    kv_bytes: int | None = None


def build_payload(endpoint: str, model: str, prompt: Prompt, *, ignore_eos: bool = False,
                  temperature: float = 0.0) -> dict[str, Any]:
    """The streamed request body for `/v1/completions` or `/v1/chat/completions`."""
    body: dict[str, Any] = {"model": model, "max_tokens": prompt.max_tokens, "temperature": temperature,
                            "stream": True, "stream_options": {"include_usage": True}}
    if endpoint == CHAT_COMPLETIONS:
        body["messages"] = [{"role": "user", "content": prompt.text}]
    elif endpoint == COMPLETIONS:
        body["prompt"] = prompt.text
    else:
        raise ValueError(f"unknown endpoint {endpoint!r}; known: {', '.join(ENDPOINTS)}")
    if ignore_eos:
        body["ignore_eos"] = True
    return body


class EndpointError(RuntimeError):
    """The server cannot be benchmarked at all (e.g. GET /v1/models fails)."""


async def discover_model(client: httpx.AsyncClient, base_url: str) -> str:
    """The first model id of `GET /v1/models`; raises EndpointError when that fails or lists none."""
    url = f"{base_url}/v1/models"
    try:
        response = await client.get(url)
        response.raise_for_status()
        models = response.json().get("data") or []
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        raise EndpointError(f"GET {url} failed ({type(exc).__name__}: {exc}); is the server up? "
                            "Or pass --model") from None
    if not isinstance(models, list) or not models or not isinstance(models[0], dict) or "id" not in models[0]:
        raise EndpointError(f"GET {url} lists no model; pass --model")
    return str(models[0]["id"])


async def send_streaming(client: httpx.AsyncClient, url: str, payload: dict[str, Any], *, timeout_s: float,
                         run_start_s: float, cutoff_s: float | None = None) -> RequestResult:
    """Send one streamed request and time it. Never raises for request failures: they become results.

    `cutoff_s` (a `time.perf_counter()` instant) ends the request early as `cancelled`."""
    start_s = time.perf_counter()
    budget_s = timeout_s if cutoff_s is None else min(timeout_s, cutoff_s - start_s)
    state = _StreamState()
    kind, message = None, ""
    try:
        await asyncio.wait_for(_read_stream(client, url, payload, state, start_s), max(budget_s, 0.0))
    except asyncio.TimeoutError:
        if budget_s < timeout_s:
            kind, message = CANCELLED, "cut off by the run's --max-duration-s"
        else:
            kind, message = "timeout", f"no complete response within {timeout_s} s"
    except httpx.TimeoutException as exc:
        kind, message = "timeout", f"{type(exc).__name__} (limit {timeout_s} s)"
    except httpx.TransportError as exc:
        kind, message = "connection", f"{type(exc).__name__}: {exc}"
    except StreamFailure as exc:
        kind, message = exc.kind, str(exc)
    return _result(state, start_s, run_start_s, kind, message)


def _result(state: _StreamState, start_s: float, run_start_s: float, kind: str | None,
            message: str) -> RequestResult:
    offsets = tuple(state.chunk_offsets_s)
    output_tokens = state.usage_output_tokens if state.usage_output_tokens is not None else len(offsets)
    if kind is None and output_tokens == 0:
        kind, message = "empty_stream", "the stream finished without any output token"
    return RequestResult(
        ok=kind is None, start_s=start_s - run_start_s, e2e_s=time.perf_counter() - start_s,
        chunk_offsets_s=offsets, output_tokens=output_tokens, prompt_tokens=state.usage_prompt_tokens,
        error_kind=kind, error_message=message[:500], server_timing_ms=state.server_timing_ms,
        kv_bytes=state.kv_bytes)


async def _read_stream(client: httpx.AsyncClient, url: str, payload: dict[str, Any], state: _StreamState,
                       start_s: float) -> None:
    async with client.stream("POST", url, json=payload) as response:
        state.server_timing_ms.update(parse_server_timing(response.headers.get_list("server-timing")))
        state.kv_bytes = server_timing_kv_bytes(response.headers.get_list("server-timing"))
        if response.status_code != 200:
            body = (await response.aread()).decode("utf-8", errors="replace")
            raise StreamFailure(f"http_{response.status_code}", _error_message(body))
        event = ""
        async for line in response.aiter_lines():
            if not line:
                event = ""
            elif line.startswith("event:"):
                event = line[len("event:"):].strip()
            elif line.startswith("data:"):
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    return
                _handle_data(data, event, state, start_s)
    raise StreamFailure("incomplete_stream", "the stream ended without [DONE]")


def _handle_data(data: str, event: str, state: _StreamState, start_s: float) -> None:
    now_s = time.perf_counter()
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError:
        if event == "error":
            raise StreamFailure("stream_error", data) from None
        raise StreamFailure("bad_chunk", f"not JSON: {data[:200]}") from None
    if event == "error" or (isinstance(chunk, dict) and chunk.get("error")):
        raise StreamFailure("stream_error", _error_message(data))
    if not isinstance(chunk, dict):
        raise StreamFailure("bad_chunk", f"not a JSON object: {data[:200]}")
    if any(_choice_text(choice) for choice in chunk.get("choices") or []):
        state.chunk_offsets_s.append(now_s - start_s)
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        if isinstance(usage.get("completion_tokens"), int):
            state.usage_output_tokens = usage["completion_tokens"]
        if isinstance(usage.get("prompt_tokens"), int):
            state.usage_prompt_tokens = usage["prompt_tokens"]


def _choice_text(choice: Any) -> str:
    if not isinstance(choice, dict):
        return ""
    delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
    return choice.get("text") or delta.get("content") or delta.get("reasoning_content") or ""


def _error_message(body: str) -> str:
    """OpenAI `{"error": {"message"}}`, FastAPI `{"detail"}`, or the raw text."""
    try:
        parsed = json.loads(body)
    except json.JSONDecodeError:
        return body.strip()[:500]
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if error or parsed.get("detail"):
            return str(error or parsed["detail"])
    return body.strip()[:500]
