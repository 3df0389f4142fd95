"""Benchmark prompts: lengths with and without a tokenizer, shared prefixes, ShareGPT parsing."""

from __future__ import annotations

import json
import random

import pytest

from bench import datasets
from bench.datasets import DatasetError


class MergingTokenizer:
    """A tiny tokenizer whose decode/encode do not round-trip: ids 27-30 decode to two letters that
    encode back as two tokens, so exact lengths need the truncate/top-up loop."""

    all_special_ids = [0]
    _pieces = ["<s>"] + [chr(ord("a") + i) for i in range(26)] + ["th", "he", "in", "er"]

    def __len__(self) -> int:
        return len(self._pieces)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [1 + ord(ch) - ord("a") for ch in text if "a" <= ch <= "z"]
        return ([0] if add_special_tokens else []) + ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(self._pieces[i] for i in token_ids if not (skip_special_tokens and i == 0))


def test_exact_text_hits_the_length_despite_merges():
    tokenizer = MergingTokenizer()
    rng = random.Random(3)
    for length in (1, 7, 64, 200):
        text, measured = datasets.exact_text(tokenizer, length, rng)
        assert measured == length
        assert len(tokenizer.encode(text, add_special_tokens=False)) == length
        assert "<s>" not in text


def test_random_dataset_with_tokenizer_is_exact_and_seeded():
    tokenizer = MergingTokenizer()
    first = datasets.random_dataset(5, 32, 16, seed=1, tokenizer=tokenizer)
    again = datasets.random_dataset(5, 32, 16, seed=1, tokenizer=tokenizer)
    other = datasets.random_dataset(5, 32, 16, seed=2, tokenizer=tokenizer)
    assert first.exact_lengths and first == again and first != other
    assert {p.prompt_tokens for p in first.prompts} == {32}
    assert {p.max_tokens for p in first.prompts} == {16}
    assert len({p.text for p in first.prompts}) == 5


def test_random_dataset_without_tokenizer_uses_words_and_says_approximate():
    dataset = datasets.random_dataset(3, 50, 8, seed=0)
    assert not dataset.exact_lengths and "approximate" in dataset.note
    for prompt in dataset.prompts:
        words = prompt.text.split()
        assert len(words) == 50 == prompt.prompt_tokens
        assert set(words) <= set(datasets.WORDS)


def test_prefix_dataset_shares_the_prefix_only():
    dataset = datasets.prefix_dataset(4, prefix_len=20, suffix_len=5, max_tokens=8, seed=0)
    texts = [p.text.split() for p in dataset.prompts]
    assert all(words[:20] == texts[0][:20] for words in texts)
    assert len({tuple(words[20:]) for words in texts}) == 4
    assert {p.prompt_tokens for p in dataset.prompts} == {25}


def test_prefix_dataset_with_tokenizer_counts_real_tokens():
    dataset = datasets.prefix_dataset(3, 10, 4, 8, seed=0, tokenizer=MergingTokenizer())
    assert dataset.exact_lengths
    assert {p.prompt_tokens for p in dataset.prompts} == {14}


def sharegpt_file(tmp_path, data) -> str:
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def test_sharegpt_takes_human_turns_and_reply_lengths(tmp_path):
    data = [
        {"id": "a", "conversations": [{"from": "human", "value": "why is the sky blue"},
                                      {"from": "gpt", "value": "because of " + "scattering " * 9}]},
        {"id": "b", "conversations": [{"from": "gpt", "value": "starts with the model"},
                                      {"from": "human", "value": "skipped"}]},
        {"id": "c", "conversations": [{"from": "human", "value": "only one turn"}]},
        {"id": "d"},
    ]
    dataset = datasets.sharegpt_dataset(sharegpt_file(tmp_path, data), 3, max_tokens=None)
    assert [p.text for p in dataset.prompts] == ["why is the sky blue"] * 3  # cycled
    assert dataset.prompts[0].max_tokens == 15  # ceil(11 words × 1.3)
    fixed = datasets.sharegpt_dataset(sharegpt_file(tmp_path, data), 1, max_tokens=4)
    assert fixed.prompts[0].max_tokens == 4


@pytest.mark.parametrize("content,message", [
    ("{broken", "not a readable JSON"),
    (json.dumps({"conversations": []}), "JSON list"),
    (json.dumps([{"conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": "x"}]}]),
     "no usable conversations"),
])
def test_sharegpt_bad_files_named(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError, match=message) as excinfo:
        datasets.sharegpt_dataset(path, 1, None)
    assert str(path) in str(excinfo.value)


def test_sharegpt_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="no such ShareGPT file"):
        datasets.sharegpt_dataset(tmp_path / "none.json", 1, None)
