"""Command-line flags from a settings model: a setting is one field, and its flag follows from it.

A frozen pydantic model (the settings of one process role) describes each field once: its type, default,
bounds and `description` (the help text). `add_flags` turns the fields into argparse options:
`kv_lease_s` → `--kv-lease-s`; a `bool` that defaults to true → `--no-NAME`; a `Literal` → choices; a
`dict[str, str]` → a repeatable `--NAME KEY=VALUE`; a `tuple[str, ...]` → one JSON list of strings. A field
may set `json_schema_extra={"flag": "--other-name", "metavar": "N", "choices": [...] or a callable}`, or
`{"flag": None}` to have no flag.
Options default to "not given" (argparse.SUPPRESS), so `given_values` returns only what the user typed and
the model's own defaults apply to the rest: defaults live in the model, once.
"""

from __future__ import annotations

import argparse
import json
import typing
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from core.errors import ConfigError


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, model: type[BaseModel], *,
              skip: tuple[str, ...] = (), defaults: dict[str, Any] | None = None) -> list[str]:
    """Add one option per field of `model` (except `skip` and fields with `flag: None`); return the field
    names added. `defaults` overrides the default shown in the help (e.g. a role's port)."""
    added = []
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if name in skip or extra.get("flag", "") is None:
            continue
        shown = (defaults or {}).get(name, info.default)
        _add_one(parser, name, info, extra, shown)
        added.append(name)
    return added


def given_values(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """The values of `names` the user gave on the command line (absent ones are left to the model)."""
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def _add_one(parser: Any, name: str, info: FieldInfo, extra: dict[str, Any], shown: Any) -> None:
    flag = extra.get("flag") or "--" + name.replace("_", "-")
    help_text = info.description or name.replace("_", " ")
    kind, inner = _kind(info.annotation)
    if kind == "bool":
        if shown is True:
            flag = extra.get("flag") or "--no-" + name.replace("_", "-")
            parser.add_argument(flag, dest=name, action="store_false", default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, dest=name, action="store_true", default=argparse.SUPPRESS, help=help_text)
        return
    options: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "metavar": extra.get("metavar")}
    if kind == "dict":
        options.update(action="append", type=_key_value, metavar=extra.get("metavar") or "KEY=VALUE")
        help_text += " (repeatable)"
    elif kind == "tuple":
        options.update(type=_json_strings, metavar=extra.get("metavar") or "JSON")
    elif kind == "literal":
        options.update(choices=inner, metavar=None)
    else:
        options["type"] = inner
    if "choices" in extra:  # a callable is asked now, so that late registrations (transports) are listed
        choices = extra["choices"]
        options.update(choices=list(choices() if callable(choices) else choices), metavar=None)
    if _showable(shown) and "(default:" not in help_text:
        help_text += f" (default: {shown})"
    parser.add_argument(flag, help=help_text, **options)


def _showable(default: Any) -> bool:
    return default not in (None, "", {}, ()) and type(default).__name__ != "PydanticUndefinedType"


def _kind(annotation: Any) -> tuple[str, Any]:
    """('bool'|'dict'|'tuple'|'literal'|'scalar', detail) for a field's type, `X | None` unwrapped."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        inner = [a for a in args if a is not type(None)]
        return _kind(inner[0]) if len(inner) == 1 else ("scalar", str)
    if annotation is bool:
        return "bool", None
    if origin is dict:
        return "dict", None
    if origin is tuple:
        return "tuple", None
    if origin is Literal:
        return "literal", list(args)
    return "scalar", annotation if annotation in (int, float, str) else str


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    return key, value


def _json_strings(text: str) -> tuple[str, ...]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise argparse.ArgumentTypeError("must be a JSON list of strings")
    return tuple(value)


def pairs_to_dict(pairs: list[tuple[str, str]] | dict[str, str]) -> dict[str, str]:
    """`--env` values (a list of (key, value), later ones winning) as a dict."""
    return dict(pairs.items()) if isinstance(pairs, dict) else dict(pairs)


def describe_validation_error(exc: Exception, prefix: str = "") -> ConfigError:
    """A pydantic ValidationError as a ConfigError naming each field: `prefix field: what is wrong; ...`."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return ConfigError(f"{prefix}{exc}")
    parts = []
    for error in errors():
        loc = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field (a typo?)"
        elif error["type"] == "missing":
            message = "required field is missing"
        parts.append(f"{loc}: {message}" if loc else message)
    return ConfigError(prefix + "; ".join(parts))
