"""A model's KV geometry: what one token of KV cache costs. The one place it is computed.

KV bytes per token = 2 (K and V) × layers × kv_heads × head_dim × bytes per element (DESIGN §4:
Llama-3.1-8B bf16 131,072 B; SmolLM2-135M fp32 46,080 B). Nodes report it in `/info`, the router and
bench multiply prompt tokens by it, `disagg kv-size` builds its arithmetic on it (`bench.kv_size`).

Dtypes use short names (`fp32`, `fp16`, `bf16`, `fp8`, `int8`); `normalize_dtype` takes vLLM's and torch's
spellings too (`float32`, `bfloat16`, `torch.float16`, `fp8_e4m3`, ...). `"auto"` is resolved as vLLM
resolves `--dtype auto` (vLLM's engine arguments: "FP16 precision for FP32 and FP16 models, BF16 precision
for BF16 models"); a KV cache dtype of `"auto"` is the model dtype, anything else (`fp8`, `fp8_e4m3`,
`fp8_e5m2`) sets the KV bytes per element on its own (vLLM's `--kv-cache-dtype`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from core.errors import ConfigError

DTYPE_BYTES: dict[str, int] = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}
_DTYPE_ALIASES: dict[str, str] = {
    "float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16",
    "float8": "fp8", "float8_e4m3fn": "fp8", "float8_e5m2": "fp8", "fp8_e4m3": "fp8", "fp8_e5m2": "fp8",
}


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


def resolve_dtype(requested: str, config_dtype: str) -> str:
    """The dtype a vLLM server runs for `--dtype requested` on a model whose config says `config_dtype`.

    `auto`: bf16 for a bf16 model, else fp16 (vLLM's rule, above); otherwise `requested`, normalized.
    Raises ValueError for an unknown name.
    """
    if requested.strip().lower() != "auto":
        return normalize_dtype(requested)
    return "bf16" if normalize_dtype(config_dtype) == "bf16" else "fp16"


def model_geometry(model_dir: str | Path, dtype: str = "auto", kv_cache_dtype: str = "auto") -> KVGeometry:
    """The geometry a vLLM server started with `--dtype dtype --kv-cache-dtype kv_cache_dtype` has for the
    model in `model_dir` (its `config.json`). Raises ModelConfigError (file or field) or ValueError (dtype)."""
    geometry = load_config_geometry(model_dir)
    try:
        model_dtype = resolve_dtype(dtype, geometry.dtype)
        cache_dtype = model_dtype if kv_cache_dtype.strip().lower() == "auto" else normalize_dtype(kv_cache_dtype)
    except ValueError as exc:
        raise ModelConfigError(f"{model_dir}: {exc}") from None
    return replace(geometry, dtype=cache_dtype)
