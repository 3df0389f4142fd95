"""Benchmark metrics: one request's outcome and the pure math that summarizes many of them.

Definitions (the ones vLLM's and SGLang's benchmarks use):
- TTFT: request sent → first content chunk received.
- TPOT: (E2E − TTFT) / (output_tokens − 1); defined only for requests with ≥ 2 output tokens.
- ITL: gap between consecutive content chunks (one value per gap, pooled over requests).
- E2E: request sent → stream finished.
Percentiles interpolate linearly between order statistics (numpy's default). Nothing here does I/O.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

GOODPUT_KEYS = ("ttft_ms", "tpot_ms", "e2e_ms")
CANCELLED = "cancelled"  # error_kind of requests cut off by --max-duration-s; not a server failure
_KV_DESC = re.compile(r'(?:^|,)\s*kv\s*;[^,]*?desc="?\s*(\d+)\s*bytes', re.IGNORECASE)


@dataclass(frozen=True)
class RequestResult:
    """One measured request. Times are seconds; `chunk_offsets_s` are content-chunk arrivals since send."""

    ok: bool
    start_s: float
    e2e_s: float
    chunk_offsets_s: tuple[float, ...] = ()
    output_tokens: int = 0
    prompt_tokens: int | None = None
    error_kind: str | None = None
    error_message: str = ""
    server_timing_ms: Mapping[str, float] = field(default_factory=dict)
    kv_bytes: int | None = None  # the router's Server-Timing `kv;desc="N bytes"` (disaggregated requests)

    @property
    def ttft_s(self) -> float | None:
        return self.chunk_offsets_s[0] if self.chunk_offsets_s else None

    @property
    def tpot_s(self) -> float | None:
        if self.ttft_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)

    @property
    def itl_s(self) -> list[float]:
        offsets = self.chunk_offsets_s
        return [later - earlier for earlier, later in zip(offsets, offsets[1:])]

    def to_json(self) -> dict[str, Any]:
        """Per-request record for the results file (no per-chunk arrays)."""
        return {
            "ok": self.ok, "error_kind": self.error_kind, "error_message": self.error_message,
            "start_s": round(self.start_s, 6), "e2e_ms": _ms(self.e2e_s), "ttft_ms": _ms(self.ttft_s),
            "tpot_ms": _ms(self.tpot_s), "output_tokens": self.output_tokens,
            "prompt_tokens": self.prompt_tokens, "server_timing_ms": dict(self.server_timing_ms),
            "kv_bytes": self.kv_bytes,
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation; None for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside [0, 100]")
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def distribution_ms(values_s: Sequence[float]) -> dict[str, float | int | None]:
    """count, mean, p50, p95, p99 of values given in seconds, reported in milliseconds."""
    values_ms = [value * 1000 for value in values_s]
    mean = sum(values_ms) / len(values_ms) if values_ms else None
    stats: dict[str, float | int | None] = {"count": len(values_ms), "mean": mean}
    for q in (50, 95, 99):
        stats[f"p{q}"] = percentile(values_ms, q)
    return stats


def parse_server_timing(header_values: Sequence[str]) -> dict[str, float]:
    """W3C Server-Timing (`prefill;dur=123.4, queue;dur=0.2;desc="a, b"`) → {name: dur ms}.

    Metrics without `dur` are skipped; the first occurrence of a repeated name wins; malformed
    entries are ignored rather than failing the request."""
    timings: dict[str, float] = {}
    for header in header_values:
        for entry in _split_outside_quotes(header, ","):
            parts = _split_outside_quotes(entry, ";")
            name = parts[0].strip() if parts else ""
            if not name or name in timings:
                continue
            for param in parts[1:]:
                key, _, value = param.partition("=")
                if key.strip().lower() == "dur":
                    try:
                        timings[name] = float(value.strip().strip('"'))
                    except ValueError:
                        pass
                    break
    return timings


def server_timing_kv_bytes(header_values: Sequence[str]) -> int | None:
    """The router's `kv;desc="N bytes"` Server-Timing entry, or None."""
    for header in header_values:
        match = _KV_DESC.search(header)
        if match:
            return int(match.group(1))
    return None


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    return [piece for piece in re.split(rf'{separator}(?=(?:[^"]*"[^"]*")*[^"]*$)', text) if piece.strip()]


def parse_goodput(text: str) -> dict[str, float]:
    """`ttft_ms=500,tpot_ms=50` → {"ttft_ms": 500.0, "tpot_ms": 50.0}; raises ValueError."""
    limits: dict[str, float] = {}
    for item in filter(None, (piece.strip() for piece in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in GOODPUT_KEYS:
            raise ValueError(f"bad goodput limit {item!r}: expected KEY=MS with KEY in {', '.join(GOODPUT_KEYS)}")
        try:
            limits[key] = float(value)
        except ValueError:
            raise ValueError(f"bad goodput limit {item!r}: {value!r} is not a number") from None
        if limits[key] <= 0:
            raise ValueError(f"bad goodput limit {item!r}: must be positive")
    if not limits:
        raise ValueError("empty goodput limits")
    return limits


def meets_limits(result: RequestResult, limits_ms: Mapping[str, float]) -> bool:
    """A successful request within every limit; an undefined TPOT (one token) does not count against it."""
    if not result.ok:
        return False
    observed_s = {"ttft_ms": result.ttft_s, "tpot_ms": result.tpot_s, "e2e_ms": result.e2e_s}
    for key, limit_ms in limits_ms.items():
        value_s = observed_s[key]
        if value_s is None and key == "ttft_ms":
            return False
        if value_s is not None and value_s * 1000 > limit_ms:
            return False
    return True


def aggregate_server_timing(results: Sequence[RequestResult]) -> dict[str, dict[str, float | int | None]]:
    """{metric name: count, mean, p50 in ms} over the successful requests that reported it."""
    by_name: dict[str, list[float]] = {}
    for result in results:
        if result.ok:
            for name, dur_ms in result.server_timing_ms.items():
                by_name.setdefault(name, []).append(dur_ms)
    return {
        name: {"count": len(values), "mean_ms": sum(values) / len(values), "p50_ms": percentile(values, 50)}
        for name, values in sorted(by_name.items())
    }


def summarize(results: Sequence[RequestResult], duration_s: float,
              goodput_limits_ms: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The run's summary: counts, throughput, latency distributions, failures by kind, goodput."""
    ok = [result for result in results if result.ok]
    cancelled = [result for result in results if result.error_kind == CANCELLED]
    failed = [result for result in results if not result.ok and result.error_kind != CANCELLED]
    output_tokens = sum(result.output_tokens for result in ok)
    counted = len(ok) + len(failed)

    def per_s(count: int) -> float:
        return count / duration_s if duration_s > 0 else 0.0

    summary: dict[str, Any] = {
        "num_requests": len(results), "num_ok": len(ok), "num_failed": len(failed),
        "num_cancelled": len(cancelled),
        "failures": dict(sorted(Counter(str(result.error_kind) for result in failed).items())),
        "duration_s": duration_s,
        "requests_per_s": per_s(len(ok)),
        "output_tokens_per_s": per_s(output_tokens),
        "total_output_tokens": output_tokens,
        "total_prompt_tokens": sum(result.prompt_tokens or 0 for result in ok),
        "ttft_ms": distribution_ms([r.ttft_s for r in ok if r.ttft_s is not None]),
        "tpot_ms": distribution_ms([r.tpot_s for r in ok if r.tpot_s is not None]),
        "itl_ms": distribution_ms([gap for r in ok for gap in r.itl_s]),
        "e2e_ms": distribution_ms([r.e2e_s for r in ok]),
        "server_timing": aggregate_server_timing(results),
    }
    if goodput_limits_ms:
        good = sum(1 for result in results if meets_limits(result, goodput_limits_ms))
        summary["goodput"] = {"limits_ms": dict(goodput_limits_ms), "num_good": good,
                              "requests_per_s": per_s(good),
                              "fraction": good / counted if counted else 0.0}
    return summary
