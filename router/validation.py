"""Checks on a client's request body before any node sees it.

vLLM validates sampling parameters itself and its 4xx answers are relayed; these checks catch what
must never reach a node (non-objects, wrong types, empty prompts) and what the P/D protocol cannot
serve, so that every bad request is a 400 in OpenAI's shape.
"""

from __future__ import annotations

import json
import math
from typing import Any

from core.errors import BadRequest

INT_FIELDS = ("max_tokens", "max_completion_tokens", "n", "seed", "logprobs", "top_logprobs", "top_k")
NUMBER_FIELDS = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "repetition_penalty")
MAX_INT = 2**31 - 1
MAX_JSON_DEPTH = 32  # OpenAI's own bodies nest 5 deep (tools' JSON schemas a little more)


def parse_body(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object of finite numbers nested at most MAX_JSON_DEPTH deep, else BadRequest."""
    try:
        body = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, huge ints are ValueErrors
        raise BadRequest(f"request body is not valid JSON: {str(exc)[:200]}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_json")
    if _depth(body) > MAX_JSON_DEPTH:
        raise BadRequest(f"request body nests deeper than {MAX_JSON_DEPTH} levels", code="invalid_json")
    try:  # a lone UTF-16 surrogate escape (e.g. "\\ud800") is valid JSON but not text: vLLM fails on it (500)
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("request body holds a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair): "
                         "not valid Unicode text", code="invalid_unicode") from None
    return body


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def validate_completion(body: dict[str, Any]) -> None:
    _check_common(body)
    prompt = body.get("prompt")
    if prompt is None:
        raise BadRequest("'prompt' is required", param="prompt", code="missing_field")
    if isinstance(prompt, str):
        if not prompt:
            raise BadRequest("'prompt' must not be empty", param="prompt")
    elif isinstance(prompt, list):
        if not prompt or not all(_is_prompt_item(p) for p in prompt):
            raise BadRequest("'prompt' must be a non-empty string, list of strings or list of token ids",
                             param="prompt")
    else:
        raise BadRequest("'prompt' must be a string or a list", param="prompt")


def validate_chat(body: dict[str, Any]) -> None:
    _check_common(body)
    messages = body.get("messages")
    if messages is None:
        raise BadRequest("'messages' is required", param="messages", code="missing_field")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a string 'role'", param=f"messages[{i}]")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise BadRequest(f"messages[{i}].content must be a string or a list", param=f"messages[{i}].content")


def _check_common(body: dict[str, Any]) -> None:
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise BadRequest("'model' is required and must be a non-empty string", param="model")
    for name in INT_FIELDS:
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or abs(value) > MAX_INT):
            raise BadRequest(f"'{name}' must be an integer", param=name)
    for name in ("max_tokens", "max_completion_tokens", "n"):
        value = body.get(name)
        if value is not None and value < 1:
            raise BadRequest(f"'{name}' must be at least 1, got {value}", param=name)
    for name in NUMBER_FIELDS:
        value = body.get(name)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise BadRequest(f"'{name}' must be a number", param=name)
    if "stream" in body and not isinstance(body["stream"], bool):
        raise BadRequest("'stream' must be a boolean", param="stream")
    for name in ("stream_options", "logit_bias", "response_format"):
        if body.get(name) is not None and not isinstance(body[name], dict):
            raise BadRequest(f"'{name}' must be an object", param=name)
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str) and not (
            isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise BadRequest("'stop' must be a string or a list of strings", param="stop")
    if body.get("n", 1) != 1:
        raise BadRequest("'n' > 1 is not supported: send n separate requests", param="n")
    if "kv_transfer_params" in body:
        raise BadRequest("'kv_transfer_params' is set by the router, not by clients", param="kv_transfer_params")


def _is_prompt_item(item: Any) -> bool:
    if isinstance(item, bool):
        return False
    if isinstance(item, str):
        return bool(item)
    if isinstance(item, int):
        return item >= 0
    return isinstance(item, list) and bool(item) and all(isinstance(t, int) and not isinstance(t, bool) for t in item)
