"""Metrics math on hand-made timings: percentiles, TTFT/TPOT/ITL, summary, goodput, Server-Timing."""

from __future__ import annotations

import pytest

from bench.metrics import (CANCELLED, RequestResult, distribution_ms, meets_limits, parse_goodput,
                           parse_server_timing, percentile, summarize)


def ok(chunks: tuple[float, ...], e2e_s: float, tokens: int | None = None, **kw) -> RequestResult:
    return RequestResult(ok=True, start_s=0.0, e2e_s=e2e_s, chunk_offsets_s=chunks,
                         output_tokens=len(chunks) if tokens is None else tokens, **kw)


def failed(kind: str) -> RequestResult:
    return RequestResult(ok=False, start_s=0.0, e2e_s=0.5, error_kind=kind, error_message="x")


def test_percentile_interpolates_linearly():
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 95) == pytest.approx(3.85)
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile(values, 100) == 4.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_distribution_reports_milliseconds():
    stats = distribution_ms([0.1, 0.2, 0.3])
    assert stats["count"] == 3
    assert stats["mean"] == pytest.approx(200.0)
    assert stats["p50"] == pytest.approx(200.0)
    assert stats["p99"] == pytest.approx(298.0)
    assert distribution_ms([])["mean"] is None


def test_ttft_tpot_itl_of_one_request():
    result = ok((0.2, 0.25, 0.35, 0.4), e2e_s=0.5)
    assert result.ttft_s == 0.2
    assert result.tpot_s == pytest.approx((0.5 - 0.2) / 3)
    assert result.itl_s == pytest.approx([0.05, 0.1, 0.05])


def test_tpot_uses_usage_token_count_not_chunks():
    result = ok((0.1, 0.3), e2e_s=0.4, tokens=7)  # e.g. several tokens per chunk
    assert result.tpot_s == pytest.approx(0.3 / 6)
    assert ok((0.1,), e2e_s=0.2).tpot_s is None


def test_summary_counts_throughput_and_failures_by_kind():
    results = [ok((0.1, 0.2), 0.3), ok((0.3, 0.4, 0.5, 0.6), 0.7),
               failed("http_500"), failed("http_500"), failed("timeout"), failed(CANCELLED)]
    summary = summarize(results, duration_s=2.0)
    assert (summary["num_ok"], summary["num_failed"], summary["num_cancelled"]) == (2, 3, 1)
    assert summary["failures"] == {"http_500": 2, "timeout": 1}
    assert summary["requests_per_s"] == 1.0
    assert summary["output_tokens_per_s"] == 3.0
    assert summary["ttft_ms"]["mean"] == pytest.approx(200.0)
    assert summary["itl_ms"]["count"] == 4  # 1 gap + 3 gaps, pooled
    assert summary["e2e_ms"]["p50"] == pytest.approx(500.0)
    assert "goodput" not in summary


def test_goodput_applies_every_limit():
    fast = ok((0.1, 0.15, 0.2), 0.2)          # ttft 100 ms, tpot 50 ms
    slow_start = ok((0.9, 0.95), 1.0)         # ttft 900 ms
    slow_tokens = ok((0.1, 0.5, 0.9), 0.9)    # tpot 400 ms
    single = ok((0.1,), 0.1)                  # no TPOT: not held against it
    results = [fast, slow_start, slow_tokens, single, failed("connection")]
    summary = summarize(results, 2.0, {"ttft_ms": 500, "tpot_ms": 100})
    assert summary["goodput"]["num_good"] == 2
    assert summary["goodput"]["requests_per_s"] == 1.0
    assert summary["goodput"]["fraction"] == pytest.approx(2 / 5)
    assert not meets_limits(fast, {"e2e_ms": 150})
    assert not meets_limits(failed("timeout"), {"ttft_ms": 1e9})


def test_parse_goodput():
    assert parse_goodput("ttft_ms=500, tpot_ms=50") == {"ttft_ms": 500.0, "tpot_ms": 50.0}
    for bad in ("ttft=500", "ttft_ms", "tpot_ms=fast", "e2e_ms=-1", ""):
        with pytest.raises(ValueError):
            parse_goodput(bad)


def test_parse_server_timing():
    header = 'queue;dur=0.2, prefill;desc="prefill, on p0";dur=123.4,cache;desc=hit, kv;dur="7.5"'
    assert parse_server_timing([header]) == {"queue": 0.2, "prefill": 123.4, "kv": 7.5}


def test_parse_server_timing_several_headers_and_junk():
    timings = parse_server_timing(["prefill;dur=10", "prefill;dur=99, decode;dur=30", "x;dur=abc", ""])
    assert timings == {"prefill": 10.0, "decode": 30.0}


def test_server_timing_aggregated_over_successful_requests():
    results = [ok((0.1,), 0.1, server_timing_ms={"prefill": 10.0, "queue": 1.0}),
               ok((0.1,), 0.1, server_timing_ms={"prefill": 30.0}),
               ok((0.1,), 0.1, server_timing_ms={"prefill": 50.0}),
               RequestResult(ok=False, start_s=0, e2e_s=1, error_kind="http_502",
                             server_timing_ms={"prefill": 1000.0})]
    timing = summarize(results, 1.0)["server_timing"]
    assert timing["prefill"] == {"count": 3, "mean_ms": 30.0, "p50_ms": 30.0}
    assert timing["queue"]["count"] == 1


def test_request_record_is_json_ready():
    record = ok((0.1, 0.2), 0.3, prompt_tokens=12, server_timing_ms={"queue": 1.5}).to_json()
    assert record["ttft_ms"] == 100.0 and record["e2e_ms"] == 300.0 and record["tpot_ms"] == 200.0
    assert record["prompt_tokens"] == 12 and record["server_timing_ms"] == {"queue": 1.5}
