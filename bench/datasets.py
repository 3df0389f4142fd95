"""Benchmark prompts: `random` (given token length), `prefix` (shared prefix + unique suffix), `sharegpt`.

With a tokenizer (a local Hugging Face folder, loaded lazily through `transformers`) prompt lengths are
exact: random token ids are decoded, re-encoded and adjusted until the text is N tokens long, not
counting special tokens the server adds (e.g. BOS) or a chat template. Without one, random text is
built from a fixed list of common English words, each about one token in BPE vocabularies, and
lengths are reported as approximate.
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

DATASET_NAMES = ("random", "prefix", "sharegpt")
SHAREGPT_MAX_OUTPUT_TOKENS = 1024
WORDS_TO_TOKENS = 1.3  # rough English tokens per whitespace word, for estimates without a tokenizer
_EXACT_TRIES = 10
WORDS = tuple(
    "the of and to in is was for on with as by at from that this it be are not or have an they which "
    "one you were all we can her has there been if more when will would who so no time people year way "
    "day man thing woman life child world school state family student group country problem hand part "
    "place case week company system program question work government number night point home water room "
    "mother area money story fact month lot right study book eye job word business issue side kind head "
    "house service friend father power hour game line end member law car city name team minute idea".split()
)


class Tokenizer(Protocol):
    """The slice of a Hugging Face tokenizer this module uses."""

    all_special_ids: list[int]

    def __len__(self) -> int: ...
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...
    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...


class DatasetError(ValueError):
    """A dataset file or option cannot produce prompts; the message names the file or option."""


@dataclass(frozen=True)
class Prompt:
    """One request's input: text, its token count (exact or estimated) and the output length to ask for."""

    text: str
    prompt_tokens: int
    max_tokens: int


@dataclass(frozen=True)
class Dataset:
    name: str
    prompts: tuple[Prompt, ...]
    exact_lengths: bool
    note: str = ""


def load_tokenizer(path: str) -> Tokenizer:
    """A local Hugging Face tokenizer folder; `transformers` is imported only here."""
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise DatasetError(f"--tokenizer needs the `transformers` package ({exc})") from None
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot load a tokenizer from {path}: {exc}") from None


def word_text(num_words: int, rng: random.Random) -> str:
    """`num_words` random words from the fixed list, joined by spaces."""
    return " ".join(rng.choice(WORDS) for _ in range(num_words))


def exact_text(tokenizer: Tokenizer, num_tokens: int, rng: random.Random) -> tuple[str, int]:
    """Text that encodes to `num_tokens` tokens (no special tokens); returns (text, measured length).

    Decoding random ids and re-encoding rarely round-trips exactly, so the ids are truncated or topped
    up and re-checked a few times; the last attempt is returned with its real length."""
    special = set(tokenizer.all_special_ids)
    vocab_size = len(tokenizer)

    def random_ids(count: int) -> list[int]:
        ids: list[int] = []
        while len(ids) < count:
            token_id = rng.randrange(vocab_size)
            if token_id not in special:
                ids.append(token_id)
        return ids

    ids = random_ids(num_tokens)
    text, measured = "", -1
    for _ in range(_EXACT_TRIES):
        text = tokenizer.decode(ids, skip_special_tokens=True)
        encoded = tokenizer.encode(text, add_special_tokens=False)
        measured = len(encoded)
        if measured == num_tokens:
            break
        ids = encoded[:num_tokens] if measured > num_tokens else encoded + random_ids(num_tokens - measured)
    return text, measured


def random_dataset(num_prompts: int, input_len: int, max_tokens: int, seed: int = 0,
                   tokenizer: Tokenizer | None = None) -> Dataset:
    """`num_prompts` independent random prompts of `input_len` tokens each."""
    rng = random.Random(seed)
    prompts = [_random_prompt(input_len, max_tokens, rng, tokenizer) for _ in range(num_prompts)]
    return _finish("random", prompts, input_len, tokenizer)


def prefix_dataset(num_prompts: int, prefix_len: int, suffix_len: int, max_tokens: int, seed: int = 0,
                   tokenizer: Tokenizer | None = None) -> Dataset:
    """Prompts that share one random prefix of `prefix_len` tokens, each followed by `suffix_len` own tokens."""
    rng = random.Random(seed)
    prefix = _random_prompt(prefix_len, max_tokens, rng, tokenizer).text
    prompts = []
    for _ in range(num_prompts):
        suffix = _random_prompt(suffix_len, max_tokens, rng, tokenizer).text
        text = f"{prefix} {suffix}" if tokenizer is None else prefix + suffix
        length = prefix_len + suffix_len if tokenizer is None else _count_tokens(text, tokenizer)
        prompts.append(Prompt(text, length, max_tokens))
    return _finish("prefix", prompts, prefix_len + suffix_len, tokenizer,
                   note=f"shared prefix of {prefix_len} tokens")


def sharegpt_dataset(path: str | Path, num_prompts: int, max_tokens: int | None, seed: int = 0,
                     tokenizer: Tokenizer | None = None) -> Dataset:
    """First human turn of ShareGPT conversations as prompts, sampled with a seeded shuffle (cycled if
    the file has fewer). Output length: `max_tokens`, or the length of the recorded reply (capped)."""
    pairs = _sharegpt_pairs(Path(path))
    random.Random(seed).shuffle(pairs)
    prompts = []
    for index in range(num_prompts):
        question, reply = pairs[index % len(pairs)]
        output_len = max_tokens or min(max(_count_tokens(reply, tokenizer), 1), SHAREGPT_MAX_OUTPUT_TOKENS)
        prompts.append(Prompt(question, _count_tokens(question, tokenizer), output_len))
    return Dataset("sharegpt", tuple(prompts), exact_lengths=tokenizer is not None,
                   note=f"{len(pairs)} conversations in {path}")


def _sharegpt_pairs(path: Path) -> list[tuple[str, str]]:
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such ShareGPT file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of conversations")
    pairs = []
    for entry in data:
        turns = entry.get("conversations") if isinstance(entry, dict) else None
        if not isinstance(turns, list) or len(turns) < 2:
            continue
        first, second = turns[0], turns[1]
        if not (isinstance(first, dict) and isinstance(second, dict)):
            continue
        if first.get("from") in ("human", "user") and isinstance(first.get("value"), str) \
                and isinstance(second.get("value"), str) and first["value"].strip() and second["value"].strip():
            pairs.append((first["value"], second["value"]))
    if not pairs:
        raise DatasetError(f"{path}: no usable conversations (need 'conversations' with a human turn "
                           "followed by a reply)")
    return pairs


def _random_prompt(num_tokens: int, max_tokens: int, rng: random.Random,
                   tokenizer: Tokenizer | None) -> Prompt:
    if tokenizer is None:
        return Prompt(word_text(num_tokens, rng), num_tokens, max_tokens)
    text, measured = exact_text(tokenizer, num_tokens, rng)
    return Prompt(text, measured, max_tokens)


def _count_tokens(text: str, tokenizer: Tokenizer | None) -> int:
    if tokenizer is None:
        return math.ceil(len(text.split()) * WORDS_TO_TOKENS)
    return len(tokenizer.encode(text, add_special_tokens=False))


def _finish(name: str, prompts: list[Prompt], target_len: int, tokenizer: Tokenizer | None,
            note: str = "") -> Dataset:
    if tokenizer is None:
        return Dataset(name, tuple(prompts), exact_lengths=False,
                       note="; ".join(filter(None, [note, "no tokenizer: lengths are approximate (word count)"])))
    misses = sum(1 for prompt in prompts if prompt.prompt_tokens != target_len)
    if misses:
        log.warning("%d of %d %s prompts missed the target length of %d tokens", misses, len(prompts),
                    name, target_len)
    return Dataset(name, tuple(prompts), exact_lengths=misses == 0, note=note)
