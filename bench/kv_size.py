"""KV-cache sizing: a model's KV geometry and the arithmetic built on it.

KV bytes per token = 2 (K and V) × layers × kv_heads × head_dim × bytes per element. Everything else
(per sequence, per batch with an overhead factor φ, sequences that fit, transfer time, the memory
bandwidth a decode rate needs) is derived from that one number. Pure functions; the table/JSON output
of `disagg kv-size` lives in `bench.kv_size_cli`.

Units: bytes are exact integers; memory sizes given by users are GiB (2**30 B); bandwidths are GB/s
(10**9 B/s), the way links and memory buses are quoted.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from disagg.errors import ConfigError

DTYPE_BYTES: dict[str, int] = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}
_DTYPE_ALIASES: dict[str, str] = {
    "float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16",
    "float8": "fp8", "float8_e4m3fn": "fp8", "float8_e5m2": "fp8", "fp8_e4m3": "fp8", "fp8_e5m2": "fp8",
}
GIB = 2**30
GB = 10**9
OVERHEAD_FACTOR_RANGE = (1.0, 2.0)
DEFAULT_OVERHEAD_FACTOR = 1.2


class ModelConfigError(ConfigError):
    """A model config or preset cannot be turned into a KV geometry; the message names file and field."""


@dataclass(frozen=True)
class KVGeometry:
    """What decides a model's KV-cache size. Validated when built."""

    name: str
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: str

    def __post_init__(self) -> None:
        for field in ("num_layers", "num_attention_heads", "num_kv_heads", "head_dim"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ModelConfigError(f"{self.name}: {field} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_kv_heads:
            raise ModelConfigError(
                f"{self.name}: num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_kv_heads})")
        if self.dtype not in DTYPE_BYTES:
            raise ModelConfigError(f"{self.name}: unknown dtype {self.dtype!r}; known: {sorted(DTYPE_BYTES)}")

    @property
    def bytes_per_element(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def attention_kind(self) -> str:
        """MHA (one KV head per query head), MQA (one KV head) or GQA (in between)."""
        if self.num_kv_heads == self.num_attention_heads:
            return "MHA"
        return "MQA" if self.num_kv_heads == 1 else "GQA"

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.bytes_per_element


# name: (layers, attention heads, kv heads, head_dim, dtype, what it illustrates)
PRESETS: dict[str, tuple[int, int, int, int, str, str]] = {
    "Llama-3.1-8B": (32, 32, 8, 128, "bf16", "GQA, 8 KV heads"),
    "Llama-3.1-70B": (80, 64, 8, 128, "bf16", "GQA, 8 KV heads"),
    "Llama-2-7B": (32, 32, 32, 128, "fp16", "MHA example: every query head has its own KV head"),
    "Falcon-7B": (32, 71, 1, 64, "bf16", "MQA example: one KV head shared by all query heads"),
    "SmolLM2-135M": (30, 9, 3, 64, "fp32", "GQA; disagg's default CPU model, served in fp32"),
}


def normalize_dtype(name: str) -> str:
    """`bfloat16` → `bf16` etc.; raises ValueError for an unknown dtype."""
    key = name.strip().lower().removeprefix("torch.")
    key = _DTYPE_ALIASES.get(key, key)
    if key not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {name!r}; known: {', '.join(DTYPE_BYTES)}")
    return key


def preset_geometry(name: str) -> KVGeometry:
    """The geometry of a named preset (case-insensitive)."""
    for preset_name, (layers, heads, kv_heads, head_dim, dtype, _) in PRESETS.items():
        if preset_name.lower() == name.strip().lower():
            return KVGeometry(preset_name, layers, heads, kv_heads, head_dim, dtype)
    raise ModelConfigError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")


def load_config_geometry(path: str | Path) -> KVGeometry:
    """Read a Hugging Face `config.json` (the file, or the model folder holding it)."""
    file = Path(path)
    if file.is_dir():
        file = file / "config.json"
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelConfigError(f"{file}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelConfigError(f"{file}: not a readable JSON file ({exc})") from None
    if not isinstance(raw, dict):
        raise ModelConfigError(f"{file}: expected a JSON object at the top level")
    return geometry_from_config(raw, source=str(file))


def geometry_from_config(config: dict[str, Any], source: str) -> KVGeometry:
    """Build a geometry from a parsed config; multimodal configs are read from `text_config`."""
    if "num_hidden_layers" not in config and isinstance(config.get("text_config"), dict):
        config = config["text_config"]
    layers = _positive_int(config, "num_hidden_layers", source)
    heads = _positive_int(config, "num_attention_heads", source)
    kv_heads = _positive_int(config, "num_key_value_heads", source) if config.get(
        "num_key_value_heads") is not None else heads
    if config.get("head_dim") is not None:
        head_dim = _positive_int(config, "head_dim", source)
    else:
        hidden = _positive_int(config, "hidden_size", source)
        if hidden % heads:
            raise ModelConfigError(f"{source}: hidden_size ({hidden}) is not a multiple of "
                                   f"num_attention_heads ({heads}) and there is no head_dim")
        head_dim = hidden // heads
    dtype_name = config.get("torch_dtype") or config.get("dtype") or "fp16"
    try:
        dtype = normalize_dtype(str(dtype_name))
    except ValueError as exc:
        raise ModelConfigError(f"{source}: field 'torch_dtype': {exc}") from None
    name = str(config.get("_name_or_path") or Path(source).parent.name or source)
    try:
        return KVGeometry(name, layers, heads, kv_heads, head_dim, dtype)
    except ModelConfigError as exc:
        raise ModelConfigError(f"{source}: {exc}") from None


def _positive_int(config: dict[str, Any], field: str, source: str) -> int:
    if field not in config:
        raise ModelConfigError(f"{source}: required field '{field}' is missing")
    value = config[field]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelConfigError(f"{source}: field '{field}' must be a positive integer, got {value!r}")
    return value


def check_overhead_factor(overhead_factor: float) -> float:
    low, high = OVERHEAD_FACTOR_RANGE
    if not low <= overhead_factor <= high:
        raise ValueError(f"overhead factor {overhead_factor} outside [{low}, {high}] (typical: 1.1-1.3)")
    return overhead_factor


def kv_bytes_per_sequence(geometry: KVGeometry, context_tokens: int) -> int:
    """KV bytes one sequence of `context_tokens` tokens (prompt + output) holds."""
    _require_non_negative(context_tokens=context_tokens)
    return geometry.kv_bytes_per_token * context_tokens


def kv_memory_bytes(geometry: KVGeometry, context_tokens: int, concurrency: int,
                    overhead_factor: float = DEFAULT_OVERHEAD_FACTOR) -> int:
    """Memory for `concurrency` sequences of `context_tokens` each, times φ (fragmentation, block padding,
    activations). Rounded up to a whole byte."""
    _require_non_negative(concurrency=concurrency)
    raw = kv_bytes_per_sequence(geometry, context_tokens) * concurrency
    return math.ceil(raw * check_overhead_factor(overhead_factor))


def max_sequences(geometry: KVGeometry, memory_bytes: int, context_tokens: int,
                  overhead_factor: float = DEFAULT_OVERHEAD_FACTOR) -> int:
    """How many sequences of `context_tokens` fit in `memory_bytes` of KV memory, after φ."""
    _require_non_negative(memory_bytes=memory_bytes)
    per_sequence = kv_bytes_per_sequence(geometry, context_tokens) * check_overhead_factor(overhead_factor)
    if per_sequence <= 0:
        raise ValueError("context_tokens must be positive to count sequences")
    return int(memory_bytes // per_sequence)


def transfer_time_s(kv_bytes: int, bandwidth_gb_s: float) -> float:
    """Seconds to move `kv_bytes` over a link of `bandwidth_gb_s` GB/s (10**9 B/s), no latency term."""
    if bandwidth_gb_s <= 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth_gb_s} GB/s")
    return kv_bytes / (bandwidth_gb_s * GB)


def decode_bandwidth_gb_s(geometry: KVGeometry, decode_tokens_per_s: float, avg_context_tokens: int,
                          num_params: float = 0, weight_bytes_per_param: float = 2,
                          concurrency: int = 1) -> float:
    """Memory bandwidth (GB/s) that decoding `decode_tokens_per_s` tokens/s (all sequences together) needs.

    Each generated token reads its sequence's KV: kv_bytes_per_token × avg_context_tokens. Each decode step
    also reads all weights once (num_params × weight_bytes_per_param) and yields `concurrency` tokens, so
    weights cost weight_bytes / concurrency per token. num_params = 0 leaves weights out.
    """
    _require_non_negative(decode_tokens_per_s=decode_tokens_per_s, avg_context_tokens=avg_context_tokens,
                          num_params=num_params)
    if concurrency <= 0:
        raise ValueError(f"concurrency must be positive, got {concurrency}")
    kv_read_bytes = geometry.kv_bytes_per_token * avg_context_tokens
    weight_read_bytes = num_params * weight_bytes_per_param / concurrency
    return decode_tokens_per_s * (kv_read_bytes + weight_read_bytes) / GB


def _require_non_negative(**values: float) -> None:
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{name} must not be negative, got {value}")
