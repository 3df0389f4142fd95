"""`bench compare`'s report and plots on synthetic results: the derived numbers, the Markdown table, the PNGs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from bench import analysis, plots, report
from bench.compare import cap_prompt_lens, kv_bytes_from_server_timing

KV_BYTES_PER_TOKEN = 40_000
LINK_GB_S = 1.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def dist(mean: float | None) -> dict[str, Any]:
    return {"count": 0 if mean is None else 3, "mean": mean, "p50": mean, "p95": mean, "p99": mean}


def length_entry(prompt_len: int, ttft_ms: float, e2e_ms: float, transfer: dict[str, Any] | None = None,
                 prompt_tokens: float | None = None, header_kv_bytes: float | None = None) -> dict[str, Any]:
    return {"prompt_len": prompt_len, "num_requests": 3, "num_ok": 3, "failures": {},
            "prompt_tokens_mean": prompt_tokens if prompt_tokens is not None else prompt_len,
            "output_tokens_mean": 100, "ttft_ms": dist(ttft_ms), "e2e_ms": dist(e2e_ms),
            "tpot_ms": dist((e2e_ms - ttft_ms) / 99), "decode_ms": dist(e2e_ms - ttft_ms),
            "server_timing": {"prefill": {"count": 3, "mean_ms": ttft_ms * 0.8, "p50_ms": ttft_ms * 0.8}},
            "header_kv_bytes_mean": header_kv_bytes, "transfer": transfer, "requests": []}


def transfer(time_ms: float, num_bytes: float, cached_tokens: float = 0) -> dict[str, Any]:
    """Three transfers of `num_bytes` taking 0.5, 1 and 1.5 × `time_ms` (mean and median: `time_ms`)."""
    per_request = [{"bytes": num_bytes, "time_ms": time_ms * factor} for factor in (0.5, 1.0, 1.5)]
    return {"source": "vllm_metrics", "connector": "nixl", "count": 3, "time_ms_mean": time_ms,
            "time_ms_p50": time_ms, "time_ms_max": time_ms * 1.5, "bytes_mean": num_bytes,
            "per_request": per_request,
            "prompt_tokens_by_source": {"external_kv_transfer": 768.0, "local_cache_hit": cached_tokens}}


def synthetic_results() -> dict[str, Any]:
    """Colocated and nixl at 256 and 1,000 prompt tokens. At 256 tokens: KV 10.24 MB (exactly 2 blocks),
    predicted 10.24 ms at 1 GB/s, measured 20 ms, decode 1,000 ms; TTFT 200 → 250 ms, E2E 1,200 → 1,500 ms."""
    # Transfers on the line ms = bytes / 2 GB/s + 3 ms: effective bandwidth 2 GB/s, fixed cost 3 ms.
    small_bytes, large_bytes = 256 * KV_BYTES_PER_TOKEN, 1024 * KV_BYTES_PER_TOKEN
    return {
        "benchmark": "compare", "timestamp": "2025-01-01T00:00:00+00:00", "model": "tiny",
        "settings": {"output_len": 100, "num_requests": 3, "num_warmup": 1, "seed": 7,
                     "prompt_lens": [256, 1000], "requested_prompt_lens": [256, 1000], "exact_lengths": True},
        "kv_bytes_per_token": KV_BYTES_PER_TOKEN, "block_size_tokens": 128, "max_model_len": 2048,
        "link": {"gb_per_s": LINK_GB_S, "method": "synthetic", "samples_gb_s": [0.9, 1.0, 1.1]},
        "modes": [
            {"name": "colocated", "kind": "colocated", "url": "http://c", "decode_metrics_url": None,
             "model": "tiny", "lengths": [length_entry(256, 200, 1200), length_entry(1000, 400, 1400)]},
            {"name": "nixl", "kind": "disagg", "url": "http://d", "decode_metrics_url": "http://m",
             "model": "tiny",
             "lengths": [length_entry(256, 250, 1500, transfer(small_bytes / 2e6 + 3, small_bytes)),
                         length_entry(1000, 500, 1300, transfer(large_bytes / 2e6 + 3, large_bytes))]},
        ],
    }


def table_row(markdown: str, section: str, first_cell: str) -> list[str]:
    """The cells of the table row starting with `first_cell` in the `## section` of the report."""
    body = markdown.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    for line in body.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in section {section!r}:\n{body}")


def test_comparison_rows_derive_prediction_and_overheads() -> None:
    results = synthetic_results()
    rows = analysis.comparison_rows(results, results["modes"][1])
    small, large = rows
    assert small.kv_bytes == 256 * KV_BYTES_PER_TOKEN == small.kv_bytes_blocks  # 256 tokens = 2 whole blocks
    assert small.predicted_transfer_ms == pytest.approx(10.24)  # 10.24 MB / 1 GB/s
    assert small.measured_transfer_ms == pytest.approx(256 * KV_BYTES_PER_TOKEN / 2e6 + 3)
    assert small.decode_ms == 1000
    assert small.predicted_overhead_pct == pytest.approx(1.024)
    assert small.measured_overhead_pct == pytest.approx((5.12 + 3) / 10)
    assert small.ttft_overhead_pct == pytest.approx(25.0) and small.e2e_overhead_pct == pytest.approx(25.0)
    # 1,000 tokens round up to 8 blocks = 1,024 tokens; disaggregated E2E was faster: a negative overhead
    assert large.kv_bytes == 1000 * KV_BYTES_PER_TOKEN and large.kv_bytes_blocks == 1024 * KV_BYTES_PER_TOKEN
    assert large.predicted_transfer_ms == pytest.approx(40.96)
    assert large.e2e_overhead_pct == pytest.approx((1300 / 1400 - 1) * 100)


def test_fit_recovers_effective_bandwidth_and_fixed_cost() -> None:
    results = synthetic_results()
    points = analysis.transfer_points(results["modes"][1])
    assert len(points) == 6  # one per request
    fit = analysis.fit_line([x for x, _ in points], [y for _, y in points])
    assert fit is not None and fit.intercept == pytest.approx(3.0) and fit.r_squared < 1
    assert analysis.effective_bandwidth_gb_s(fit) == pytest.approx(2.0)
    for entry in results["modes"][1]["lengths"]:
        del entry["transfer"]["per_request"]  # older results: one mean point per length
    points = analysis.transfer_points(results["modes"][1])
    assert len(points) == 2
    assert analysis.effective_bandwidth_gb_s(analysis.fit_line(*zip(*points))) == pytest.approx(2.0)
    assert analysis.fit_line([5.0, 5.0], [1.0, 2.0]) is None  # one distinct size: no slope
    assert analysis.effective_bandwidth_gb_s(analysis.fit_line([1.0, 2.0], [3.0, 1.0])) is None


def test_markdown_main_table_has_the_derived_values() -> None:
    markdown = report.render_markdown(synthetic_results())
    cells = table_row(markdown, "nixl vs colocated", "256")
    header = table_row(markdown, "nixl vs colocated", "prompt tokens")
    row = dict(zip(header, cells))
    assert row["KV MB"] == "10.24" and row["KV MB in 128-tok blocks"] == "10.24"
    assert row["link GB/s"] == "1.00" and row["pred. xfer ms"] == "10.24" and row["meas. xfer ms"] == "8.12"
    assert row["decode ms (100 tok)"] == "1,000.0"
    assert row["xfer/decode pred."] == "1.02 %" and row["xfer/decode meas."] == "0.81 %"
    assert row["TTFT coloc. ms"] == "200.0" and row["TTFT disagg. ms"] == "250.0" and row["TTFT +%"] == "25.0 %"
    assert row["E2E +%"] == "25.0 %"
    large = dict(zip(header, table_row(markdown, "nixl vs colocated", "1,000")))
    assert large["KV MB in 128-tok blocks"] == "40.96" and large["E2E +%"] == "-7.1 %"
    assert "effective (fitted slope): **2.00 GB/s**, fixed cost 3.00 ms" in markdown
    xfer_header = ["prompt tokens", "transfers", "MB/xfer", "mean ms", "p50 ms", "max ms", "GB/s (mean)"]
    body = markdown.split("Transfers of nixl", 1)[1]
    row = next(line for line in body.splitlines() if line.startswith("| 256 |"))
    xfer = dict(zip(xfer_header, [cell.strip() for cell in row.strip("|").split("|")]))
    assert xfer["transfers"] == "3" and xfer["MB/xfer"] == "10.24" and xfer["mean ms"] == "8.12"
    assert xfer["max ms"] == "12.18" and xfer["GB/s (mean)"] == "1.26"
    assert "## Warnings" not in markdown
    for name in ("ttft.png", "transfer.png", "e2e.png"):
        assert f"]({name})" in markdown


def test_markdown_flags_failures_cache_hits_and_missing_values() -> None:
    results = synthetic_results()
    nixl_small = results["modes"][1]["lengths"][0]
    nixl_small.update(num_ok=2, failures={"http_500": 1})
    nixl_small["transfer"] = transfer(8.0, 1e6, cached_tokens=128)
    results["link"] = {"gb_per_s": None, "method": "measurement failed"}
    del results["modes"][0]  # no colocated baseline
    results["not_measured"] = ["tcp: its cluster did not start"]
    markdown = report.render_markdown(results)
    assert "- not measured: tcp: its cluster did not start" in markdown
    assert "nixl, prompt length 256: 2 of 3 requests ok (failures: {'http_500': 1})" in markdown
    assert "128 prompt tokens came from the decode node's prefix cache" in markdown
    assert "No colocated baseline was measured" in markdown
    row = table_row(markdown, "nixl vs colocated", "256")
    assert row[5] == report.NOT_AVAILABLE and row[7] == report.NOT_AVAILABLE  # no prediction, no decode time


def test_router_bytes_are_a_marked_fallback() -> None:
    results = synthetic_results()
    for entry in results["modes"][1]["lengths"]:
        entry["transfer"], entry["header_kv_bytes_mean"] = None, entry["prompt_len"] * KV_BYTES_PER_TOKEN
    row = analysis.comparison_rows(results, results["modes"][1])[0]
    assert row.measured_bytes == 256 * KV_BYTES_PER_TOKEN and row.measured_bytes_source == "server_timing"
    assert row.measured_transfer_ms is None
    assert table_row(report.render_markdown(results), "nixl vs colocated", "256")[3] == "10.24†"


def test_prompt_lengths_are_capped_at_context_minus_output() -> None:
    assert cap_prompt_lens([128, 512, 4096, 2048], 2048, 100) == (128, 512, 1948)
    assert cap_prompt_lens([512, 128], None, 100) == (128, 512)
    with pytest.raises(ValueError):
        cap_prompt_lens([128], 100, 100)


def test_kv_bytes_are_read_from_server_timing() -> None:
    assert kv_bytes_from_server_timing(['queue;dur=0.1, prefill;dur=812.5, kv;desc="5898240 bytes"']) == 5898240
    assert kv_bytes_from_server_timing(["queue;dur=0.1", 'kv;desc="10 bytes"']) == 10
    assert kv_bytes_from_server_timing(['queue;dur=0.1, prefill;dur=3']) is None
    assert kv_bytes_from_server_timing(['kvx;desc="10 bytes"']) is None


def check_png(path: Path) -> Any:
    from matplotlib import image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000
    pixels = image.imread(str(path))
    assert pixels.shape[0] == int(plots.FIGSIZE_IN[1] * plots.DPI)
    assert pixels.shape[1] == int(plots.FIGSIZE_IN[0] * plots.DPI)
    assert pixels.std() > 0.01  # something was drawn
    return pixels


def test_plots_are_valid_pngs(tmp_path: Path) -> None:
    paths = plots.write_plots(synthetic_results(), tmp_path)
    assert sorted(path.name for path in paths.values()) == ["e2e.png", "transfer.png", "ttft.png"]
    for path in paths.values():
        check_png(path)


def test_plots_survive_missing_data(tmp_path: Path) -> None:
    results = copy.deepcopy(synthetic_results())
    for mode in results["modes"]:
        for entry in mode["lengths"]:
            entry["transfer"] = None
    results["modes"][1]["lengths"][1]["ttft_ms"] = dist(None)
    empty = plots.plot_transfer(results, tmp_path / "transfer.png")
    with_data = plots.plot_transfer(synthetic_results(), tmp_path / "transfer-data.png")
    assert (check_png(empty) != check_png(with_data)).any()
    check_png(plots.plot_ttft(results, tmp_path / "ttft.png"))
