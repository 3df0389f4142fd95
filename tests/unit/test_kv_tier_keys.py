"""The KV tier's key namespace: model identity (not its path), KV spec, block size, hash algorithm and
device each change it; keys parse back; the circuit breaker's states."""

from __future__ import annotations

import shutil

import pytest

from transport.kv_tier.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from transport.kv_tier.keys import KEY_PREFIX, Namespace, model_identity, split_key

pytestmark = pytest.mark.timeout(30)
FACTS = dict(model_identity="folder:abc", kv_spec="FullAttentionSpec:128:3:64:torch.float32:l0,l1",
             block_size=128, hash_algo="sha256", device="cpu")


def test_every_fact_changes_the_namespace():
    base = Namespace.of(**FACTS)
    assert len(base.id) == 12 and base == Namespace.of(**FACTS)
    for name, other in (("model_identity", "folder:abd"), ("kv_spec", FACTS["kv_spec"].replace("float32", "bfloat16")),
                        ("block_size", 16), ("hash_algo", "sha256_cbor"), ("device", "cuda")):
        assert Namespace.of(**{**FACTS, name: other}) != base, name


def test_keys_name_the_namespace_and_the_block_and_parse_back():
    namespace, block_hash = Namespace.of(**FACTS), bytes(range(32))
    key = namespace.key(block_hash)
    assert key == KEY_PREFIX + namespace.id.encode() + b":" + block_hash.hex().encode()
    assert key.startswith(b"disagg:kv:v1:")
    assert split_key(key) == (namespace.id, block_hash.hex())
    for bad in (b"other:" + key, key.replace(b":", b";"), KEY_PREFIX + b"short:00", KEY_PREFIX + b"x" * 12 + b":zz"):
        with pytest.raises(ValueError):
            split_key(bad)


def _model(folder, config: bytes, weights: bytes):
    folder.mkdir()
    (folder / "config.json").write_bytes(config)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "README.md").write_text("not part of the identity")
    return folder


def test_model_identity_is_the_folder_s_content_not_its_path(tmp_path):
    a = _model(tmp_path / "a", b'{"hidden_size": 576}', b"w" * 100)
    b = tmp_path / "elsewhere" / "b"
    b.parent.mkdir()
    shutil.copytree(a, b)
    (b / "README.md").write_text("changed")
    assert model_identity(str(a)) == model_identity(str(b))
    (b / "model.safetensors").write_bytes(b"w" * 101)  # other weights (a fine-tune of another size)
    assert model_identity(str(a)) != model_identity(str(b))
    c = _model(tmp_path / "c", b'{"hidden_size": 960}', b"w" * 100)
    assert model_identity(str(a)) != model_identity(str(c))


def test_a_hub_model_is_its_name_and_revision():
    assert model_identity("HuggingFaceTB/SmolLM2-135M-Instruct") == "hub:HuggingFaceTB/SmolLM2-135M-Instruct@default"
    assert model_identity("org/m", "v2") != model_identity("org/m", "v1")


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def test_breaker_opens_on_failure_and_tries_once_after_the_cooldown():
    clock = Clock()
    breaker = CircuitBreaker(5.0, clock)
    assert breaker.state == CLOSED and breaker.allow() and breaker.ready()
    breaker.record_failure()
    assert breaker.state == OPEN and not breaker.allow() and not breaker.ready()
    clock.now_s += 4.9
    assert not breaker.allow()
    clock.now_s += 0.2
    assert breaker.ready() and breaker.allow() and breaker.state == HALF_OPEN
    assert not breaker.allow(), "one trial at a time"
    breaker.record_failure()
    assert breaker.state == OPEN and breaker.openings == 2
    clock.now_s += 5.1
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == CLOSED and breaker.allow()


def test_a_trial_whose_result_is_lost_allows_another_after_a_cooldown():
    clock = Clock()
    breaker = CircuitBreaker(1.0, clock)
    breaker.record_failure()
    clock.now_s += 1.0
    assert breaker.allow()
    clock.now_s += 0.5
    assert not breaker.allow()
    clock.now_s += 0.6
    assert breaker.allow()
