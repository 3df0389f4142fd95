"""A request's prompt token ids, as vLLM will see them, computed in the router (the `tokenizers` package,
imported only here; never transformers, torch or vllm).

- `/v1/completions`: a text prompt is encoded with the model's `tokenizer.json` (special tokens added unless
  the request says `add_special_tokens: false`, as vLLM does); a prompt of token ids is taken as it is; a
  one-element list of either too (the router splits batches before routing).
- `/v1/chat/completions`: the chat template renders the messages (router.chat_template), and the text is
  encoded without special tokens (vLLM's chat default, `add_special_tokens: false`).
- `truncate_prompt_tokens: N` keeps the last N tokens, as vLLM does.

`PromptTokenizer.token_ids(endpoint, body)` returns None for what it cannot reproduce (other prompt shapes,
`prompt_embeds`, chat it cannot render). Prefix routing only needs the prompt's block hashes, so a
tokenization that differs from the node's only costs cache hits, never correctness.
"""

from __future__ import annotations

from typing import Any

from tokenizers import Tokenizer

from router.chat_template import ChatTemplate, special_tokens
from router.tokenizer_files import TokenizerFiles


class PromptTokenizer:
    def __init__(self, files: TokenizerFiles) -> None:
        self.tokenizer = Tokenizer.from_str(files.tokenizer_json)
        template = files.chat_template
        self.chat = ChatTemplate(template, special_tokens(files.tokenizer_config)) if template else None
        self.origin = files.origin

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def token_ids(self, endpoint: str, body: dict[str, Any]) -> list[int] | None:
        """The prompt's token ids (`endpoint`: "completions" or "chat"), or None where not known exactly."""
        if body.get("prompt_embeds") is not None:
            return None
        return truncated(body, self._chat(body) if endpoint == "chat" else self._completion(body))

    def _completion(self, body: dict[str, Any]) -> list[int] | None:
        prompt = _single_prompt(body)
        if isinstance(prompt, str):
            return self.encode(prompt, body.get("add_special_tokens", True) is not False)
        return given_ids(body)

    def _chat(self, body: dict[str, Any]) -> list[int] | None:
        if self.chat is None:
            return None
        text = self.chat.render(body)
        if text is None:
            return None
        return self.encode(text, body.get("add_special_tokens", False) is True)


def _single_prompt(body: dict[str, Any]) -> Any:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        return prompt[0]
    return prompt


def given_ids(body: dict[str, Any]) -> list[int] | None:
    """A completion prompt given as token ids (no tokenizer needed), truncated as vLLM does; else None."""
    prompt = _single_prompt(body)
    if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt) \
            and body.get("prompt_embeds") is None:
        return truncated(body, list(prompt))
    return None


def truncated(body: dict[str, Any], ids: list[int] | None) -> list[int] | None:
    """`ids` cut to the request's `truncate_prompt_tokens` (the last N), as vLLM does."""
    keep = body.get("truncate_prompt_tokens")
    if ids is not None and isinstance(keep, int) and not isinstance(keep, bool) and 0 < keep < len(ids):
        return ids[-keep:]
    return ids
