"""The multi-turn workload: conversations that share a system prompt, several user turns each, sent in a
seeded interleaving (each conversation's turns in order, the next one only after the previous answer).

Two sources of user turns:

- `synthetic(...)`: documented generator. One system prompt of `system_tokens` shared by every conversation,
  a first user message of `first_user_tokens` and follow-ups of `followup_tokens`, all random words from
  `bench.datasets.WORDS` (lengths exact to a word with a tokenizer, else estimated at 1.3 tokens per word);
  conversation `i` with seed `s` is the same in every run.
- `sharegpt(path, ...)`: the first `turns` human messages of ShareGPT conversations that have that many
  (`{"conversations": [{"from": "human"|"gpt", "value": ...}, ...]}`), behind the same synthetic system prompt.

The assistant's side of the history is what the served model answers in the run (bench.multiturn_run), so
turn k+1's prompt is turn k's prompt, its answer and the next user message: the prefix a node can reuse.
`schedule(...)` gives the order turns are sent in: seeded, so round robin is not lucky or unlucky by
construction (a fixed order such as all first turns, then all second turns, would put every conversation
back on its node under round robin with an even number of conversations and nodes).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.datasets import WORDS, WORDS_TO_TOKENS, DatasetError, Tokenizer


@dataclass(frozen=True)
class Conversation:
    """One conversation's fixed part: its system prompt and its user turns (the answers come from the run)."""

    index: int
    system: str
    user_turns: tuple[str, ...]


@dataclass(frozen=True)
class Workload:
    name: str
    conversations: tuple[Conversation, ...]
    order: tuple[tuple[int, int], ...]  # (conversation index, turn index), in sending order
    note: str = ""

    @property
    def turns(self) -> int:
        return max(len(c.user_turns) for c in self.conversations)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "conversations": len(self.conversations), "turns": self.turns,
                "requests": len(self.order), "note": self.note}


def words_of(num_tokens: int, rng: random.Random, tokenizer: Tokenizer | None = None) -> str:
    """Random words that make about `num_tokens` tokens (with a tokenizer: the fewest words reaching it)."""
    if tokenizer is None:
        return " ".join(rng.choice(WORDS) for _ in range(max(1, round(num_tokens / WORDS_TO_TOKENS))))
    words = [rng.choice(WORDS) for _ in range(num_tokens)]  # English words: at least one token each
    low, high = 1, len(words)
    while low < high:  # the shortest prefix of words with >= num_tokens tokens
        middle = (low + high) // 2
        if len(tokenizer.encode(" ".join(words[:middle]), add_special_tokens=False)) >= num_tokens:
            high = middle
        else:
            low = middle + 1
    return " ".join(words[:low])


def schedule(turns_per_conversation: list[int], seed: int) -> tuple[tuple[int, int], ...]:
    """A seeded interleaving of every conversation's turns, each conversation's in order."""
    rng = random.Random(f"order-{seed}")
    left = {i: 0 for i, n in enumerate(turns_per_conversation) if n > 0}
    order = []
    while left:
        index = rng.choice(sorted(left))
        order.append((index, left[index]))
        left[index] += 1
        if left[index] == turns_per_conversation[index]:
            del left[index]
    return tuple(order)


def system_prompt(system_tokens: int, seed: int, tokenizer: Tokenizer | None = None) -> str:
    rng = random.Random(f"system-{seed}")
    return "You are a careful assistant. Context: " + words_of(system_tokens, rng, tokenizer)


def synthetic(num_conversations: int, turns: int, system_tokens: int, first_user_tokens: int,
              followup_tokens: int, seed: int = 0, tokenizer: Tokenizer | None = None) -> Workload:
    """`num_conversations` conversations of `turns` user turns behind one shared system prompt."""
    if num_conversations < 1 or turns < 1:
        raise DatasetError("a multi-turn workload needs at least one conversation and one turn")
    system = system_prompt(system_tokens, seed, tokenizer)
    conversations = []
    for index in range(num_conversations):
        rng = random.Random(f"conversation-{seed}-{index}")
        user = [f"Conversation {index}. " + words_of(first_user_tokens, rng, tokenizer)]
        user += [f"Question {t}: " + words_of(followup_tokens, rng, tokenizer) for t in range(1, turns)]
        conversations.append(Conversation(index, system, tuple(user)))
    note = (f"synthetic: system prompt ~{system_tokens} tokens shared, first user message ~{first_user_tokens}, "
            f"follow-ups ~{followup_tokens}, seed {seed}")
    return Workload("synthetic", tuple(conversations), schedule([turns] * num_conversations, seed), note)


def sharegpt(path: str | Path, num_conversations: int, turns: int, system_tokens: int, seed: int = 0,
             tokenizer: Tokenizer | None = None) -> Workload:
    """The first `turns` human messages of ShareGPT conversations that have at least that many."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: not a readable ShareGPT JSON file ({exc})") from None
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of conversations")
    humans = []
    for entry in data:
        messages = entry.get("conversations") if isinstance(entry, dict) else None
        said = [m["value"] for m in messages or [] if isinstance(m, dict) and m.get("from") in ("human", "user")
                and isinstance(m.get("value"), str) and m["value"].strip()]
        if len(said) >= turns:
            humans.append(tuple(said[:turns]))
    if not humans:
        raise DatasetError(f"{path}: no conversation with {turns} human turns")
    random.Random(f"sharegpt-{seed}").shuffle(humans)
    system = system_prompt(system_tokens, seed, tokenizer)
    conversations = tuple(Conversation(i, system, humans[i % len(humans)]) for i in range(num_conversations))
    return Workload("sharegpt", conversations, schedule([turns] * num_conversations, seed),
                    f"ShareGPT {path}: {len(humans)} conversations with {turns}+ human turns; system prompt "
                    f"~{system_tokens} tokens shared, seed {seed}")


def messages(conversation: Conversation, turn: int, answers: list[str]) -> list[dict[str, str]]:
    """The chat messages of `turn` (from 0): the system prompt, then user turns with the answers so far."""
    out = [{"role": "system", "content": conversation.system}]
    for t in range(turn + 1):
        out.append({"role": "user", "content": conversation.user_turns[t]})
        if t < turn:
            out.append({"role": "assistant", "content": answers[t]})
    return out
