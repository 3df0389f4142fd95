"""A model's chat template, rendered in the router the way vLLM 0.32 renders it (jinja2, imported only here).

vLLM turns a chat request into text with the Hugging Face tokenizer's `apply_chat_template`
(vllm/renderers/hf.py, `safe_apply_chat_template`), which compiles the template in an immutable sandbox with
`trim_blocks`, `lstrip_blocks` and the loop-controls extension, a `tojson` filter that does not escape HTML,
`raise_exception` and `strftime_now` (transformers/utils/chat_template_utils.py), and renders it with
`messages`, `tools`, `documents`, `add_generation_prompt` (vLLM's default: true), the tokenizer's special
tokens (`bos_token`, `eos_token`, ...) and the request's `chat_template_kwargs`. Before that, vLLM's parser
(vllm/renderers/chat_utils.py) gives each message a plain-text `content`: a string as it is, a list of
text parts joined by newlines.

`ChatTemplate.render(body)` does the same for what it can reproduce exactly: text-only messages (role,
content, name). It returns None for a request it cannot: image or audio parts, tool calls,
`continue_final_message`, a per-request `chat_template`. The router then routes without a prefix; a wrong
rendering would only lower the cache hit rate, never change an answer (the node renders for itself).
Checked against transformers and a running vLLM's `/tokenize` (tests/unit/test_prefix_tokenize.py,
tests/integration/test_prefix_routing.py).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                      "mask_token")
_MESSAGE_KEYS = {"role", "content", "name"}


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatTemplate:
    """One template source with the tokenizer's special tokens (strings, by their tokenizer_config key)."""

    def __init__(self, source: str, special_tokens: dict[str, str]) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        self.template = env.from_string(source)
        self.special_tokens = dict(special_tokens)

    def render(self, body: dict[str, Any]) -> str | None:
        """The prompt text vLLM makes of chat request `body`; None where the router cannot tell exactly."""
        if body.get("continue_final_message") or body.get("chat_template"):
            return None
        messages = conversation(body.get("messages"))
        if messages is None:
            return None
        kwargs = body.get("chat_template_kwargs") or {}
        if not isinstance(kwargs, dict):
            return None
        try:
            return self.template.render(
                **{**self.special_tokens, **kwargs}, messages=messages, tools=body.get("tools"),
                documents=body.get("documents"), add_generation_prompt=body.get("add_generation_prompt", True))
        except (jinja2.TemplateError, TypeError, ValueError):
            return None


def conversation(messages: Any) -> list[dict[str, str]] | None:
    """The messages as vLLM hands them to the template, or None when one is more than role and text."""
    if not isinstance(messages, list) or not messages:
        return None
    out = []
    for message in messages:
        if not isinstance(message, dict) or not set(message) <= _MESSAGE_KEYS | {"tool_calls"}:
            return None
        if message.get("tool_calls") or not isinstance(message.get("role"), str):
            return None
        content = _text(message.get("content"))
        if content is None:
            return None
        entry = {"role": message["role"], "content": content}
        if isinstance(message.get("name"), str):
            entry["name"] = message["name"]
        out.append(entry)
    return out


def _text(content: Any) -> str | None:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return None
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            return None
        texts.append(part["text"])
    return "\n".join(texts)


def special_tokens(tokenizer_config: dict[str, Any]) -> dict[str, str]:
    """The special-token strings of a tokenizer_config.json (a token may be a string or {"content": ...})."""
    tokens = {}
    for key in SPECIAL_TOKEN_KEYS:
        value = tokenizer_config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            tokens[key] = value
    return tokens
