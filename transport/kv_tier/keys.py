"""Tier keys: `disagg:kv:v1:<namespace>:<block hash hex>`, one per KV block.

vLLM's block hash chains the tokens of the prompt's blocks (and LoRA, multimodal and cache-salt extras),
but not the model, the KV dtype, the memory layout or the block size: two nodes of different models share
hashes. The namespace is therefore a digest of everything that makes KV bytes interchangeable, and nodes
share entries only when all of it matches:

- the model's identity: its `config.json` bytes and its weight files' names and sizes when it is a local
  folder (so the same model at different paths on different hosts matches, and a fine-tune of the same
  architecture does not), else its hub name and revision;
- the KV cache spec (block size in tokens, KV heads, head size, KV dtype, attention kind) and the layers;
- the device type (`cpu`, `cuda`: their layouts differ) and the prefix-caching hash algorithm.

Within a namespace an entry's header still names its layout, so a wrong entry is refused (`entry.unpack`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

KEY_PREFIX = b"disagg:kv:v1:"
NAMESPACE_HEX_CHARS = 12
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


@dataclass(frozen=True)
class Namespace:
    """The key space of one kind of KV block (see the module docstring); `id` is 12 hex characters."""

    id: str

    @classmethod
    def of(cls, *, model_identity: str, kv_spec: str, block_size: int, hash_algo: str, device: str) -> "Namespace":
        """The namespace of these facts (each a string as this module's callers build them)."""
        facts = {"model": model_identity, "kv_spec": kv_spec, "block_size": int(block_size),
                 "hash_algo": hash_algo, "device": device}
        digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()
        return cls(digest[:NAMESPACE_HEX_CHARS])

    def key(self, block_hash: bytes) -> bytes:
        """The tier key of one block."""
        return KEY_PREFIX + self.id.encode() + b":" + block_hash.hex().encode()


def split_key(key: bytes) -> tuple[str, str]:
    """(namespace id, block hash hex) of a key; ValueError for anything that is not a tier key."""
    if not key.startswith(KEY_PREFIX):
        raise ValueError(f"not a KV tier key: {key[:40]!r}")
    namespace, sep, block_hex = key[len(KEY_PREFIX):].decode("ascii").partition(":")
    if not sep or len(namespace) != NAMESPACE_HEX_CHARS or not block_hex or not _is_hex(namespace + block_hex):
        raise ValueError(f"not a KV tier key: {key[:80]!r}")
    return namespace, block_hex


def model_identity(model: str, revision: str | None = None) -> str:
    """A digest of the model's `config.json` and weight files (names, sizes) for a local folder; else the
    hub name and revision. Never the local path: the same model at another path on another host matches."""
    folder = Path(model).expanduser()
    config = folder / "config.json"
    if not config.is_file():
        return f"hub:{model}@{revision or 'default'}"
    digest = hashlib.sha256(config.read_bytes())
    for path in sorted(folder.iterdir()):
        if path.suffix in _WEIGHT_SUFFIXES and path.is_file():
            digest.update(f"\0{path.name}\0{path.stat().st_size}".encode())
    return "folder:" + digest.hexdigest()


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)
