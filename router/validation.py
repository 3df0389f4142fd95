"""Checks on a client's request body before any node sees it.

Two kinds, in this order:
1. The router's own hard limits, which are not about OpenAI's schema (`parse_body`): JSON that parses, an
   object, finite numbers, at most MAX_JSON_DEPTH levels, no lone UTF-16 surrogate; `kv_transfer_params`
   is the router's to set, never a client's.
2. OpenAI's published request schema (`router.schema`, checked with jsonschema-rs): what it accepts passes
   (booleans, nulls where it allows them, 64-bit integers), what it refuses is a 400 naming OpenAI's
   `param` (e.g. `messages[0].role`). Fields OpenAI does not define (vLLM's extensions: `top_k`,
   `min_tokens`, `structured_outputs`, ...) pass through for vLLM to check; its 4xx answers are relayed.

A valid body is normalized once: an OpenAI field set to null means its default, so it is dropped (vLLM's
models do not all take null, e.g. `n`).
"""

from __future__ import annotations

import json
import math
from typing import Any

from functools import lru_cache

import jsonschema_rs

from core.errors import BadRequest
from router import schema

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


def validate_request(endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    """The body, normalized (OpenAI fields set to null dropped), if OpenAI's schema for `endpoint` accepts it.

    Raises BadRequest (400, `param` the offending field's path, code `missing_required_parameter`,
    `invalid_type` or `invalid_value`). Cost: a few microseconds for a typical chat body.
    """
    if "kv_transfer_params" in body:
        raise BadRequest("kv_transfer_params: set by the router, never by a client", param="kv_transfer_params",
                         code="invalid_value")
    validator = _validator(endpoint)
    if not validator.is_valid(body):
        raise _bad_request(next(iter(validator.iter_errors(body))))
    known = schema.top_level_fields(endpoint)
    return {key: value for key, value in body.items() if value is not None or key not in known}


@lru_cache(maxsize=None)
def _validator(endpoint: str) -> Any:
    return jsonschema_rs.validator_for(schema.request_schema(endpoint))


def _bad_request(error: Any) -> BadRequest:
    """A BadRequest naming the innermost cause of a jsonschema-rs ValidationError."""
    cause, message = _explain(error)
    kind = type(cause.kind).__name__
    path = list(cause.instance_path)
    if kind == "Required" and isinstance(getattr(cause.kind, "property", None), str):
        path.append(cause.kind.property)
    param = _param(path)
    code = {"Required": "missing_required_parameter", "Type": "invalid_type"}.get(kind, "invalid_value")
    return BadRequest(f"{param}: {message}" if param else message, param=param, code=code)


def _explain(error: Any) -> tuple[Any, str]:
    """(the error that says what is wrong, its message).

    For a failed `oneOf`/`anyOf`, the branch to explain is one whose type the value has, that the value does
    not rule out by a discriminator (a one-value `enum` such as `role: "user"` or `type: "text"`) and that is
    not merely the `null` of a nullable field; if every branch is ruled out by its discriminator, the answer
    is the set of values the discriminator allows.
    """
    kind = type(error.kind).__name__
    branches = list(getattr(error.kind, "context", None) or []) if kind in ("AnyOf", "OneOfNotValid") else []
    branches = [b for b in branches if b and not all(_is_null_type(e) for e in b)]
    if not branches:
        return error, error.message
    here = list(error.instance_path)
    typed = [b for b in branches if not any(_is_type(e) and list(e.instance_path) == here for e in b)] or branches
    open_branches = [b for b in typed if not any(_is_discriminator(e) for e in b)]
    if open_branches:
        best = min(open_branches, key=len)
        return _explain(max(best, key=lambda e: len(e.instance_path)))
    ruled_out = [e for b in typed for e in b if _is_discriminator(e)]
    first = ruled_out[0]
    allowed = [str(e.kind.options[0]) for e in ruled_out if list(e.instance_path) == list(first.instance_path)]
    return first, f"{first.instance!r} is not one of {sorted(set(allowed), key=allowed.index)}"


def _is_type(error: Any) -> bool:
    return type(error.kind).__name__ == "Type"


def _is_null_type(error: Any) -> bool:
    return _is_type(error) and "null" in error.message.rsplit(" ", 1)[-1]


def _is_discriminator(error: Any) -> bool:
    return type(error.kind).__name__ == "Enum" and len(error.kind.options) == 1


def _param(path: list[Any]) -> str | None:
    """OpenAI's spelling of a path: ["messages", 0, "role"] -> "messages[0].role"."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or None
