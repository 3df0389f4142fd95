"""KV-cache sizing: a model's KV geometry and the arithmetic built on it.

KV bytes per token = 2 (K and V) × layers × kv_heads × head_dim × bytes per element. Everything else
(per sequence, per batch with an overhead factor φ, sequences that fit, transfer time, the memory
bandwidth a decode rate needs) is derived from that one number. Pure functions; the table/JSON output
of `disagg kv-size` lives in `bench.kv_size_cli`.

Units: bytes are exact integers; memory sizes given by users are GiB (2**30 B); bandwidths are GB/s
(10**9 B/s), the way links and memory buses are quoted.
"""

from __future__ import annotations

import math

from core.kv_geometry import (  # noqa: F401  (re-exported: the arithmetic's inputs)
    DTYPE_BYTES, PRESETS, KVGeometry, ModelConfigError, geometry_from_config, load_config_geometry, normalize_dtype,
    preset_geometry,
)

GIB = 2**30
GB = 10**9
OVERHEAD_FACTOR_RANGE = (1.0, 2.0)
DEFAULT_OVERHEAD_FACTOR = 1.2


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
