"""Deterministic prompts of a chosen token length, built with the model's own tokenizer."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

PASSAGE = (
    "The history of the lighthouse keepers on the northern coast is a story of patience and weather. "
    "Each evening they climbed the spiral stairs, trimmed the wicks, polished the great lens and wrote "
    "in the log the direction of the wind, the state of the sea and the ships that passed in the night. "
)


@lru_cache(maxsize=None)
def tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def prompt_of(model_dir: Path, num_tokens: int, tag: str = "") -> str:
    """Text that tokenizes to about `num_tokens` tokens, starting with `tag` (keeps prompts distinct)."""
    tok = tokenizer(model_dir)
    text = f"{tag} " + PASSAGE * (num_tokens // 40 + 2)
    ids = tok(text, add_special_tokens=False)["input_ids"][:num_tokens]
    return tok.decode(ids)


def count_tokens(model_dir: Path, text: str) -> int:
    return len(tokenizer(model_dir)(text, add_special_tokens=False)["input_ids"])
