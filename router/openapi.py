"""The router's OpenAPI document, built from the same OpenAI schemas its validation uses (router.schema).

The routes read and check their bodies themselves (`router.body`, `router.validation`), so that every bad
body gets OpenAI's error shape; the document says what they accept: OpenAI's `CreateCompletionRequest` and
`CreateChatCompletionRequest` (fields OpenAI does not define pass through to vLLM), and OpenAI's
`ErrorResponse` for every error status.
"""

from __future__ import annotations

from typing import Any

from router import schema

REF_PREFIX = "#/components/schemas/"
BODIES = {"completion": "CreateCompletionRequest", "chat": "CreateChatCompletionRequest"}


def component_schemas() -> dict[str, Any]:
    """OpenAI's definitions, as OpenAPI `components.schemas` (their `$ref`s pointing there)."""
    return {name: _rebased(node) for name, node in schema.document()["$defs"].items()}


def _rebased(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: (REF_PREFIX + value.rsplit("/", 1)[1] if key == "$ref" else _rebased(value))
                for key, value in node.items()}
    if isinstance(node, list):
        return [_rebased(item) for item in node]
    return node


def request_body(name: str) -> dict[str, Any]:
    """`openapi_extra` for a route whose JSON body is OpenAI's BODIES[name]."""
    error = {"content": {"application/json": {"schema": {"$ref": REF_PREFIX + "ErrorResponse"}}}}
    errors = {str(status): {**error, "description": why} for status, why in (
        (400, "invalid request"), (401, "missing or wrong API key"), (404, "unknown model"),
        (413, "body over --max-body-bytes"), (415, "body not JSON"), (429, "queue full (see Retry-After)"),
        (502, "a node failed"), (503, "no node can serve"), (504, "past --request-timeout-s"))}
    return {"requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": REF_PREFIX + BODIES[name]}}}},
            "responses": errors}


def add_components(document: dict[str, Any]) -> dict[str, Any]:
    """The FastAPI-generated document with OpenAI's schemas added to its components."""
    document.setdefault("components", {}).setdefault("schemas", {}).update(component_schemas())
    return document
