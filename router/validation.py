"""Checks on a client's request body before any node sees it.

vLLM validates sampling parameters itself and its 4xx answers are relayed; these checks catch what
must never reach a node (non-objects, wrong types, empty prompts) and what the P/D protocol cannot
serve, so that every bad request is a 400 in OpenAI's shape.
"""

from __future__ import annotations

import json
from typing import Any

from disagg.errors import BadRequest

INT_FIELDS = ("max_tokens", "max_completion_tokens", "n", "seed", "logprobs", "top_logprobs", "top_k")
NUMBER_FIELDS = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "repetition_penalty")
MAX_INT = 2**31 - 1


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_json")
    return body


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
