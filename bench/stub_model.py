"""The stub nodes' model (`bench.stub_vllm`): a tiny autoregressive model over token ids.

A prompt's words are its tokens (ids from a CRC-32 of each word, above the generated vocabulary); generated
token k is (sum of every token before it, prompt and output, + seed + choice) mod |WORDS|, and `EOS` has no
text. So "prompt ids + first token" continues exactly as colocated serving would after that first token, as
with vLLM: the router's first-token continuation is testable against it.
"""

from __future__ import annotations

import zlib
from typing import Any

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
MAX_TOKENS = 512  # a stub answer is never longer, whatever max_tokens says
EOS = len(WORDS)  # the end-of-sequence token: no text


def prompt_texts(body: dict[str, Any]) -> list[str]:
    """One text per prompt of the request (a batch of prompts for a list of strings or token-id lists)."""
    if "messages" in body:
        return [" ".join(str(m.get("content", "")) for m in body["messages"])]
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        return [detokenize(prompt)]
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        return [detokenize(p) if isinstance(p, list) else p for p in prompt]
    return [str(prompt)]


def prompt_text(body: dict[str, Any]) -> str:
    return " ".join(prompt_texts(body))


_TEXT_OF_ID: dict[int, str] = {}  # every word the stub has tokenized, so token-id prompts read as text again


def tokenize(text: str) -> list[int]:
    """The stub's token ids of a text: one per word, above the generated vocabulary."""
    ids = [100 + zlib.crc32(word.encode()) % 100_000 for word in text.split()]
    _TEXT_OF_ID.update(zip(ids, text.split()))
    return ids


def detokenize(ids: list[int]) -> str:
    """A token-id prompt as text (the magic words survive the router's continuation from token ids)."""
    return " ".join(_TEXT_OF_ID.get(t, word(t).strip() if 0 <= t <= EOS else str(t)) for t in ids)


def prompt_ids(body: dict[str, Any]) -> list[list[int]]:
    """Each prompt's token ids (a list of ints is one prompt; chat may bring them in kv_transfer_params)."""
    reused = (body.get("kv_transfer_params") or {}).get("prompt_token_ids")
    if "messages" in body:
        return [list(reused)] if isinstance(reused, list) else [tokenize(prompt_texts(body)[0])]
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return [list(prompt)]
    if isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):
        return [list(p) for p in prompt]
    return [tokenize(text) for text in prompt_texts(body)]


def generate(ids: list[int], body: dict[str, Any], choice: int = 0, stop_first: bool = False) -> list[int]:
    """The stub model: token k is (sum of every token before it + seed + choice) mod |WORDS|."""
    n = min(MAX_TOKENS, body.get("max_completion_tokens") or body.get("max_tokens") or 16)
    out: list[int] = []
    for _ in range(n):
        if stop_first and not out:
            return [EOS]
        out.append((sum(ids) + sum(out) + (body.get("seed") or 0) + choice) % len(WORDS))
    return out


def word(token_id: int) -> str:
    return "" if token_id == EOS else f" {WORDS[token_id]}"


def expected_tokens(body: dict[str, Any], prompt: str | None = None, choice: int = 0) -> list[str]:
    """The token texts colocated serving of the client's `body` generates (default: its only prompt)."""
    ids = prompt_ids(body)[0] if prompt is None else tokenize(prompt)
    text = prompt_texts(body)[0] if prompt is None else prompt
    return [word(t) for t in generate(ids, body, choice, stop_first="STOPFIRST" in text)]
