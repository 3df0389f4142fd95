"""The request bodies of the router's OpenAI routes, as JSON Schema for its OpenAPI document.

The routes read and check their bodies themselves (`router.body`, `router.validation`), so that every
bad body gets OpenAI's error shape; these schemas only document the fields the router itself looks at.
Every other OpenAI / vLLM sampling field is passed through to vLLM, which checks it.
"""

from __future__ import annotations

from typing import Any

_COMMON: dict[str, Any] = {
    "model": {"type": "string", "minLength": 1},
    "max_tokens": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
    "max_completion_tokens": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
    "n": {"type": "integer", "enum": [1]},
    "stream": {"type": "boolean"},
    "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    "seed": {"type": "integer"},
    "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
}

_PROMPT: dict[str, Any] = {"oneOf": [
    {"type": "string", "minLength": 1},
    {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
    {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}},
]}

_MESSAGE: dict[str, Any] = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "user", "assistant"]},
        "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
    },
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "completion": {"type": "object", "required": ["model", "prompt"],
                   "properties": {**_COMMON, "prompt": _PROMPT}},
    "chat": {"type": "object", "required": ["model", "messages"],
             "properties": {**_COMMON, "messages": {"type": "array", "minItems": 1, "items": _MESSAGE}}},
}

_ERROR_RESPONSE: dict[str, Any] = {"content": {"application/json": {"schema": {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type", "param", "code"]}},
}}}}


def request_body(name: str) -> dict[str, Any]:
    """`openapi_extra` for a route whose JSON body follows SCHEMAS[name]."""
    errors = {str(status): {**_ERROR_RESPONSE, "description": why} for status, why in (
        (400, "invalid request"), (401, "missing or wrong API key"), (404, "unknown model"),
        (413, "body over --max-body-bytes"), (415, "body not JSON"), (429, "queue full (see Retry-After)"),
        (502, "a node failed"), (503, "no node can serve"), (504, "past --request-timeout-s"))}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": SCHEMAS[name]}}},
            "responses": errors}
