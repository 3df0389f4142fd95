"""Splitting a request into single P/D requests and merging their answers into one OpenAI response: pure
functions over bodies and parsed chunks, in vLLM 0.32's shapes (entrypoints/openai/completion/serving.py,
chat_completion/serving.py, v1/engine/parallel_sampling.py).

vLLM's P/D protocol carries one prompt and one sequence per request: the prefill node returns one
`kv_transfer_params` (for a batch of prompts, only the first prompt's: `final_res_batch[0]`), and `n` > 1
would make the prefill node keep n copies of which only one is ever pulled. So a completions `prompt` that
is a list of strings or a list of token-id lists (a list of ints is ONE prompt) and `n` > 1 are split into
one request per (prompt i, choice j):

- its body is the client's with `prompt` = prompt i and no `n`; with `n` > 1 and a `seed`, choice j gets
  `seed + j`, as vLLM seeds its child j (so seeded output equals colocated);
- its choices come back under index `i * n + j` (vLLM's order); usage is summed as vLLM does (each prompt's
  tokens once, completion tokens over all choices); the response keeps the first answer's id and fields;
- streamed, every chunk gets the first chunk's id and its choice's global index; the parts' usage-only
  chunks are held back and one summed usage chunk follows the last part (`stream_options.include_usage`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.errors import BadRequest

SAMPLING_EPS = 1e-5  # vLLM: a temperature below it is greedy (sampling_params._SAMPLING_EPS)


@dataclass(frozen=True)
class Part:
    """One single request of a split: prompt `prompt_index`, choice `choice_index`, its own body."""

    prompt_index: int
    choice_index: int
    body: dict[str, Any]


@dataclass(frozen=True)
class Split:
    parts: list[Part]
    n: int  # choices per prompt in the client's request

    @property
    def is_split(self) -> bool:
        return len(self.parts) > 1

    def index_of(self, position: int) -> int:
        part = self.parts[position]
        return part.prompt_index * self.n + part.choice_index


def split(body: dict[str, Any], endpoint: str) -> Split:
    """The single requests `body` is served as (one part: the body itself, unchanged).

    Raises BadRequest for `n` > 1 with greedy sampling, which vLLM refuses for the whole request
    (sampling_params._verify_greedy_sampling) and which split parts would no longer show it.
    """
    n = body.get("n") if isinstance(body.get("n"), int) else 1
    prompts = prompts_of(body) if endpoint == "completions" else None
    if n <= 1 and (prompts is None or len(prompts) <= 1):
        return Split([Part(0, 0, body)], 1)
    temperature = body.get("temperature")
    if n > 1 and isinstance(temperature, (int, float)) and temperature < SAMPLING_EPS:
        raise BadRequest(f"n must be 1 when using greedy sampling, got {n}.", param="n", code="invalid_value")
    parts = []
    for i, prompt in enumerate(prompts if prompts is not None else [None]):
        for j in range(max(n, 1)):
            part = {key: value for key, value in body.items() if key != "n"}
            if prompts is not None:
                part["prompt"] = prompt
            if n > 1 and isinstance(body.get("seed"), int):
                part["seed"] = body["seed"] + j
            parts.append(Part(i, j, part))
    return Split(parts, max(n, 1))


def prompts_of(body: dict[str, Any]) -> list[Any] | None:
    """The prompts of a completions body: a list of strings or of token-id lists is several; anything else
    (a string, one list of token ids) is one, returned as None."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        return list(prompt)
    return None


def merge_bodies(split_: Split, bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """One response out of the parts' JSON answers (in part order)."""
    if not split_.is_split:
        return bodies[0]
    choices = []
    for position, body in enumerate(bodies):
        choices += [{**choice, "index": split_.index_of(position)} for choice in body.get("choices") or []]
    merged = {**bodies[0], "choices": sorted(choices, key=lambda c: c["index"])}
    if any(isinstance(body.get("usage"), dict) for body in bodies):
        merged["usage"] = sum_usage(split_, [body.get("usage") for body in bodies])
    return merged


def sum_usage(split_: Split, usages: list[dict[str, Any] | None]) -> dict[str, Any]:
    """vLLM's usage for the whole request: each prompt's tokens once, completion tokens of every choice."""
    prompt_tokens = completion_tokens = 0
    for part, usage in zip(split_.parts, usages):
        usage = usage or {}
        if part.choice_index == 0:
            prompt_tokens += usage.get("prompt_tokens") or 0
        completion_tokens += usage.get("completion_tokens") or 0
    template = next((u for u in usages if isinstance(u, dict)), {})
    return {**template, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class ChunkMerger:
    """Rewrites the parts' stream chunks into one stream (see the module docstring)."""

    def __init__(self, split_: Split) -> None:
        self.split = split_
        self.id: str | None = None
        self.usage_chunk: dict[str, Any] | None = None  # the first part's usage-only chunk, as a template
        self.usages: dict[int, dict[str, Any]] = {}

    def chunk(self, position: int, chunk: dict[str, Any]) -> dict[str, Any] | None:
        """The chunk to send for part `position`'s `chunk`, or None for a usage-only chunk (held back)."""
        if not chunk.get("choices") and isinstance(chunk.get("usage"), dict):
            self.usages[position] = chunk["usage"]
            self.usage_chunk = self.usage_chunk or chunk
            return None
        if not self.split.is_split:
            return chunk
        self.id = self.id or chunk.get("id")
        index = self.split.index_of(position)
        return {**chunk, "id": self.id, "choices": [{**c, "index": index} for c in chunk.get("choices") or []]}

    def final_usage_chunk(self) -> dict[str, Any] | None:
        """The one usage chunk that ends the stream, if the parts sent usage (include_usage)."""
        if self.usage_chunk is None:
            return None
        if not self.split.is_split:
            return self.usage_chunk
        usages = [self.usages.get(position) for position in range(len(self.split.parts))]
        return {**self.usage_chunk, "id": self.id or self.usage_chunk.get("id"),
                "usage": sum_usage(self.split, usages)}
