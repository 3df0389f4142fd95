"""`bench compare`'s analysis: results.json → derived comparison rows, line fits. Pure; no I/O.

Definitions (per prompt length, means over the measured requests):
- KV bytes = prompt tokens × KV bytes/token; "in blocks" rounds the tokens up to whole KV blocks, which
  is what a block-granular transfer moves.
- predicted transfer = KV bytes in blocks (or KV bytes when the block size is unknown) / link bandwidth.
- measured transfer = Δ(transfer seconds) / Δ(transfers) on the decode node's vLLM metrics.
- decode time = E2E − TTFT of the colocated requests (the time to produce the tokens after the first).
- transfer overhead = transfer time / decode time; TTFT and E2E overhead = disaggregated / colocated − 1.
- effective bandwidth = 1 / slope of a least-squares line through (transferred bytes, measured seconds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence


GB = 10**9
MB = 10**6


@dataclass(frozen=True)
class LineFit:
    """y = slope · x + intercept over `num_points` points; `r_squared` is the fit quality."""

    slope: float
    intercept: float
    r_squared: float | None
    num_points: int


@dataclass(frozen=True)
class ComparisonRow:
    """One prompt length of one disaggregated mode, next to the colocated baseline."""

    prompt_len: int
    prompt_tokens: float
    kv_bytes: float | None
    kv_bytes_blocks: float | None
    measured_bytes: float | None
    measured_bytes_source: str | None  # "vllm_metrics", "server_timing" (the router's figure) or None
    link_gb_s: float | None
    predicted_transfer_ms: float | None
    measured_transfer_ms: float | None
    decode_ms: float | None
    tpot_ms: float | None
    predicted_overhead_pct: float | None
    measured_overhead_pct: float | None
    ttft_colocated_ms: float | None
    ttft_disagg_ms: float | None
    ttft_overhead_pct: float | None
    e2e_colocated_ms: float | None
    e2e_disagg_ms: float | None
    e2e_overhead_pct: float | None


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> LineFit | None:
    """Least-squares line through the points; None with fewer than two distinct x values."""
    if len(xs) != len(ys):
        raise ValueError(f"{len(xs)} x values but {len(ys)} y values")
    if len(set(xs)) < 2:
        return None
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    syy = sum((y - mean_y) ** 2 for y in ys)
    slope = sxy / sxx
    r_squared = sxy * sxy / (sxx * syy) if syy > 0 else None
    return LineFit(slope=slope, intercept=mean_y - slope * mean_x, r_squared=r_squared, num_points=n)


def effective_bandwidth_gb_s(fit: LineFit | None) -> float | None:
    """GB/s from a fit of milliseconds against bytes; None when the slope is not positive."""
    if fit is None or fit.slope <= 0:
        return None
    return 1 / (fit.slope / 1000) / GB


def transfer_points(mode: dict[str, Any]) -> list[tuple[float, float]]:
    """(bytes, ms) of each measured transfer: one point per request where recorded, else per prompt length."""
    points = []
    for entry in mode["lengths"]:
        transfer = entry.get("transfer") or {}
        per_request = [(p["bytes"], p["time_ms"]) for p in transfer.get("per_request") or []
                       if p.get("bytes") is not None and p.get("time_ms") is not None]
        if per_request:
            points += [(float(x), float(y)) for x, y in per_request]
        elif transfer.get("time_ms_mean") is not None and transfer.get("bytes_mean") is not None:
            points.append((float(transfer["bytes_mean"]), float(transfer["time_ms_mean"])))
    return points


def predicted_transfer_ms(kv_bytes: float | None, link_gb_s: float | None) -> float | None:
    if kv_bytes is None or not link_gb_s:
        return None
    return kv_bytes / (link_gb_s * GB) * 1000


def overhead_pct(part: float | None, whole: float | None) -> float | None:
    """part / whole as a percentage."""
    return None if part is None or not whole else part / whole * 100


def relative_pct(value: float | None, baseline: float | None) -> float | None:
    """How much larger `value` is than `baseline`, in percent (negative when smaller)."""
    return None if value is None or not baseline else (value / baseline - 1) * 100


def kv_sizes(prompt_tokens: float, kv_bytes_per_token: int | None,
             block_size_tokens: int | None) -> tuple[float | None, float | None]:
    """(tokens × bytes/token, whole blocks × block tokens × bytes/token)."""
    if not kv_bytes_per_token:
        return None, None
    blocks = math.ceil(prompt_tokens / block_size_tokens) * block_size_tokens if block_size_tokens else None
    return prompt_tokens * kv_bytes_per_token, None if blocks is None else blocks * kv_bytes_per_token


def modes_of(results: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [mode for mode in results["modes"] if mode["kind"] == kind]


def _by_len(mode: dict[str, Any] | None) -> dict[int, dict[str, Any]]:
    return {entry["prompt_len"]: entry for entry in mode["lengths"]} if mode else {}


def _mean(entry: dict[str, Any] | None, key: str) -> float | None:
    return None if entry is None else entry[key]["mean"]


def comparison_rows(results: dict[str, Any], mode: dict[str, Any]) -> list[ComparisonRow]:
    """The main table of one disaggregated mode, one row per prompt length it measured."""
    colocated = _by_len(next(iter(modes_of(results, "colocated")), None))
    link_gb_s = (results.get("link") or {}).get("gb_per_s")
    rows = []
    for length, entry in sorted(_by_len(mode).items()):
        base = colocated.get(length)
        tokens = entry.get("prompt_tokens_mean") or (base or {}).get("prompt_tokens_mean") or length
        kv_bytes, kv_blocks = kv_sizes(tokens, results.get("kv_bytes_per_token"), results.get("block_size_tokens"))
        transfer = entry.get("transfer") or {}
        measured_bytes, bytes_source = _transferred_bytes(entry)
        predicted = predicted_transfer_ms(kv_blocks if kv_blocks is not None else kv_bytes, link_gb_s)
        measured, decode_ms = transfer.get("time_ms_mean"), _mean(base, "decode_ms")
        ttft_c, ttft_d = _mean(base, "ttft_ms"), _mean(entry, "ttft_ms")
        e2e_c, e2e_d = _mean(base, "e2e_ms"), _mean(entry, "e2e_ms")
        rows.append(ComparisonRow(
            prompt_len=length, prompt_tokens=tokens, kv_bytes=kv_bytes, kv_bytes_blocks=kv_blocks,
            measured_bytes=measured_bytes, measured_bytes_source=bytes_source, link_gb_s=link_gb_s,
            predicted_transfer_ms=predicted, measured_transfer_ms=measured, decode_ms=decode_ms,
            tpot_ms=_mean(base, "tpot_ms"), predicted_overhead_pct=overhead_pct(predicted, decode_ms),
            measured_overhead_pct=overhead_pct(measured, decode_ms), ttft_colocated_ms=ttft_c,
            ttft_disagg_ms=ttft_d, ttft_overhead_pct=relative_pct(ttft_d, ttft_c), e2e_colocated_ms=e2e_c,
            e2e_disagg_ms=e2e_d, e2e_overhead_pct=relative_pct(e2e_d, e2e_c)))
    return rows


def _transferred_bytes(entry: dict[str, Any]) -> tuple[float | None, str | None]:
    """Bytes per transfer from the decode node's metrics, else the router's Server-Timing figure."""
    transfer = entry.get("transfer") or {}
    if transfer.get("bytes_mean") is not None:
        return float(transfer["bytes_mean"]), "vllm_metrics"
    if entry.get("header_kv_bytes_mean") is not None:
        return float(entry["header_kv_bytes_mean"]), "server_timing"
    return None, None
