"""OpenAI's published `ErrorResponse` schema, for tests that check every error body the router sends.

The schema is the router's own extract of OpenAI's OpenAPI document (router/schema/openai_requests.json:
github.com/openai/openai-openapi, openapi.yaml, at the commit named in the file's `source`). It is checked
here with the Python `jsonschema` package, a second implementation beside the router's `jsonschema-rs`.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "router" / "schema" / "openai_requests.json"


@lru_cache(maxsize=None)
def _validator() -> Any:
    from jsonschema import Draft202012Validator

    doc = json.loads(SCHEMA_FILE.read_text())
    return Draft202012Validator({"$defs": doc["$defs"], "$ref": "#/$defs/ErrorResponse"})


def error_response_problems(body: Any) -> list[str]:
    """Why `body` is not a valid OpenAI ErrorResponse (empty: it is); `code` must be a string or null."""
    return [f"{'/'.join(map(str, e.absolute_path)) or 'body'}: {e.message}" for e in _validator().iter_errors(body)]
