"""OpenAI's published request and error schemas: the one place the router knows the OpenAI request schema.

`openai_requests.json` is extracted by `extract.py` (beside this file) from github.com/openai/openai-openapi,
`openapi.yaml`, at the commit named in its `source`: the closure of `CreateCompletionRequest`,
`CreateChatCompletionRequest` and `ErrorResponse` as JSON Schema 2020-12. `router.validation` checks bodies
against it and `router.openapi` publishes it in the router's OpenAPI document.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

SCHEMA_FILE = Path(__file__).with_name("openai_requests.json")
ROOTS = {"completions": "CreateCompletionRequest", "chat": "CreateChatCompletionRequest"}


@lru_cache(maxsize=None)
def document() -> dict[str, Any]:
    """The extracted file: `source` (repository, file, commit) and `$defs` (every schema by name)."""
    return json.loads(SCHEMA_FILE.read_text())


def schema_of(name: str) -> dict[str, Any]:
    """A self-contained JSON Schema for `$defs[name]` (with every definition it may reference)."""
    return {"$defs": document()["$defs"], "$ref": f"#/$defs/{name}"}


def request_schema(endpoint: str) -> dict[str, Any]:
    """The request body schema of `endpoint` ("completions" or "chat")."""
    return schema_of(ROOTS[endpoint])


@lru_cache(maxsize=None)
def top_level_fields(endpoint: str) -> frozenset[str]:
    """Names of the request's OpenAI fields (through `allOf`): every other top-level field is an extension."""
    names: set[str] = set()
    stack = [document()["$defs"][ROOTS[endpoint]]]
    while stack:
        node = stack.pop()
        names.update(node.get("properties", {}))
        stack.extend(node.get("allOf", []))
        if "$ref" in node:
            stack.append(document()["$defs"][node["$ref"].rsplit("/", 1)[1]])
    return frozenset(names)
