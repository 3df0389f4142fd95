"""`bench compare`'s Markdown report, rendered from results.json. Pure: a dict in, a string out.

Sections: one main table per disaggregated mode against the colocated baseline, the bandwidths (measured
link, effective from the fitted transfer line), latency per mode, notes (definitions, workload,
failures, cache hits) and the plots. The numbers are derived in `bench.analysis`.
"""

from __future__ import annotations

from typing import Any, Sequence

from bench import analysis
from bench.analysis import MB, ComparisonRow

NOT_AVAILABLE = "–"
PLOTS = (("ttft.png", "TTFT vs prompt length"), ("transfer.png", "KV transfer time vs KV bytes"),
         ("e2e.png", "End-to-end latency per mode"))
DEFINITIONS = (
    "KV MB = prompt tokens × KV bytes/token; *in blocks* rounds the tokens up to whole KV blocks, the "
    "granularity a paged KV transfer moves. *moved MB* is what the decode node's connector reported "
    "(or, marked †, the router's Server-Timing figure).",
    "Predicted transfer = KV bytes in blocks / measured link bandwidth. Measured transfer = mean seconds "
    "per transfer from the decode node's vLLM metrics (Δsum / Δcount, read around each request).",
    "Decode = E2E − TTFT of the colocated requests (all tokens after the first); TPOT = decode / (tokens − 1).",
    "xfer/decode = transfer time as a share of the decode time; TTFT +% and E2E +% = disaggregated / "
    "colocated − 1 (negative: disaggregated was faster).",
    "Effective bandwidth = 1 / slope of the least-squares line through the (moved bytes, transfer time) "
    "of every measured transfer; its intercept is the fixed cost per transfer. Few points or an outlier "
    "(see max ms) make it unreliable.",
)


def fmt(value: float | None, digits: int = 1, scale: float = 1.0, suffix: str = "") -> str:
    """A number for a table cell; `–` for a missing value."""
    return NOT_AVAILABLE if value is None else f"{value / scale:,.{digits}f}{suffix}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Markdown table lines, every column right-aligned except the first."""
    lines = ["| " + " | ".join(header) + " |", "|:---|" + "|".join(["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def main_table(rows: Sequence[ComparisonRow], output_len: int, block_size_tokens: int | None) -> list[str]:
    """The per-prompt-length comparison of one disaggregated mode with the colocated baseline."""
    blocks = f"in {block_size_tokens}-tok blocks" if block_size_tokens else "in blocks"
    header = ["prompt tokens", "KV MB", f"KV MB {blocks}", "moved MB/xfer", "link GB/s", "pred. xfer ms",
              "meas. xfer ms", f"decode ms ({output_len} tok)", "TPOT ms", "xfer/decode pred.",
              "xfer/decode meas.", "TTFT coloc. ms", "TTFT disagg. ms", "TTFT +%", "E2E coloc. ms",
              "E2E disagg. ms", "E2E +%"]
    cells = []
    for row in rows:
        moved = fmt(row.measured_bytes, 2, MB) + ("†" if row.measured_bytes_source == "server_timing" else "")
        cells.append([
            fmt(row.prompt_tokens, 0), fmt(row.kv_bytes, 2, MB), fmt(row.kv_bytes_blocks, 2, MB), moved,
            fmt(row.link_gb_s, 2), fmt(row.predicted_transfer_ms, 2), fmt(row.measured_transfer_ms, 2),
            fmt(row.decode_ms), fmt(row.tpot_ms, 2), fmt(row.predicted_overhead_pct, 2, suffix=" %"),
            fmt(row.measured_overhead_pct, 2, suffix=" %"), fmt(row.ttft_colocated_ms),
            fmt(row.ttft_disagg_ms), fmt(row.ttft_overhead_pct, 1, suffix=" %"), fmt(row.e2e_colocated_ms),
            fmt(row.e2e_disagg_ms), fmt(row.e2e_overhead_pct, 1, suffix=" %")])
    return table(header, cells)


def transfer_table(mode: dict[str, Any]) -> list[str]:
    """The decode node's measured transfers of one mode, per prompt length."""
    header = ["prompt tokens", "transfers", "MB/xfer", "mean ms", "p50 ms", "max ms", "GB/s (mean)"]
    cells = []
    for entry in mode["lengths"]:
        transfer = entry.get("transfer") or {}
        mean_ms, mean_bytes = transfer.get("time_ms_mean"), transfer.get("bytes_mean")
        rate = mean_bytes / mean_ms / 1e6 if mean_ms and mean_bytes is not None else None
        cells.append([fmt(entry.get("prompt_tokens_mean") or entry["prompt_len"], 0),
                      str(transfer.get("count", NOT_AVAILABLE)), fmt(mean_bytes, 2, MB), fmt(mean_ms, 2),
                      fmt(transfer.get("time_ms_p50"), 2), fmt(transfer.get("time_ms_max"), 2), fmt(rate, 2)])
    return table(header, cells)


def bandwidth_lines(results: dict[str, Any]) -> list[str]:
    """The measured link bandwidth and each transport's effective bandwidth from the fitted line."""
    link = results.get("link") or {}
    samples = ", ".join(f"{sample:.2f}" for sample in link.get("samples_gb_s") or [])
    lines = [f"- Link, measured: **{fmt(link.get('gb_per_s'), 2)} GB/s** ({link.get('method', 'not measured')}"
             + (f"; runs: {samples} GB/s" if samples else "") + ")"]
    for mode in analysis.modes_of(results, "disagg"):
        points = analysis.transfer_points(mode)
        fit = analysis.fit_line([x for x, _ in points], [y for _, y in points])
        bandwidth = analysis.effective_bandwidth_gb_s(fit)
        if fit is None:
            lines.append(f"- {mode['name']}, effective: {NOT_AVAILABLE} (needs measured transfers at two or "
                         f"more sizes; got {len(points)})")
            continue
        lines.append(f"- {mode['name']}, effective (fitted slope): **{fmt(bandwidth, 2)} GB/s**, fixed cost "
                     f"{fmt(fit.intercept, 2)} ms per transfer, R² {fmt(fit.r_squared, 3)}, "
                     f"{fit.num_points} points")
    return lines


def latency_table(results: dict[str, Any]) -> list[str]:
    """Latency of every mode at every prompt length."""
    header = ["mode", "prompt tokens", "ok / sent", "TTFT mean ms", "TTFT p50 ms", "TPOT ms", "decode ms",
              "E2E mean ms", "E2E p50 ms", "router prefill ms", "output tokens"]
    cells = []
    for mode in results["modes"]:
        for entry in mode["lengths"]:
            prefill = (entry.get("server_timing") or {}).get("prefill") or {}
            cells.append([mode["name"], fmt(entry.get("prompt_tokens_mean") or entry["prompt_len"], 0),
                          f"{entry['num_ok']} / {entry['num_requests']}", fmt(entry["ttft_ms"]["mean"]),
                          fmt(entry["ttft_ms"]["p50"]), fmt(entry["tpot_ms"]["mean"], 2),
                          fmt(entry["decode_ms"]["mean"]), fmt(entry["e2e_ms"]["mean"]),
                          fmt(entry["e2e_ms"]["p50"]), fmt(prefill.get("mean_ms")),
                          fmt(entry.get("output_tokens_mean"), 0)])
    return table(header, cells)


def warnings(results: dict[str, Any]) -> list[str]:
    """Modes not measured, failed requests, prompts served from a prefix cache, lengths with no transfer."""
    found = [f"not measured: {reason}" for reason in results.get("not_measured") or []]
    for mode in results["modes"]:
        for entry in mode["lengths"]:
            where = f"{mode['name']}, prompt length {entry['prompt_len']}"
            if entry["failures"] or entry["num_ok"] < entry["num_requests"]:
                found.append(f"{where}: {entry['num_ok']} of {entry['num_requests']} requests ok "
                             f"(failures: {entry['failures'] or 'cancelled'})")
            transfer = entry.get("transfer") or {}
            cached = (transfer.get("prompt_tokens_by_source") or {}).get("local_cache_hit") or 0
            if cached:
                found.append(f"{where}: {cached:.0f} prompt tokens came from the decode node's prefix cache")
            if mode["kind"] == "disagg" and entry["num_ok"] and transfer and not transfer.get("count"):
                found.append(f"{where}: the decode node's metrics show no KV transfer")
    return found


def render_markdown(results: dict[str, Any]) -> str:
    """The whole report page."""
    settings = results.get("settings") or {}
    output_len = settings.get("output_len", "?")
    lines = ["# bench compare: disaggregated vs colocated", "",
             f"Model **{results.get('model', '?')}**, {output_len} output tokens (ignore_eos, temperature 0), "
             f"{settings.get('num_requests', '?')} sequential request(s) per prompt length after "
             f"{settings.get('num_warmup', '?')} warm-up request(s) per mode; {results.get('timestamp', '')}.",
             f"KV: {fmt(results.get('kv_bytes_per_token'), 0)} bytes/token, blocks of "
             f"{results.get('block_size_tokens') or '?'} tokens.", ""]
    disagg_modes = analysis.modes_of(results, "disagg")
    if not analysis.modes_of(results, "colocated"):
        lines += ["No colocated baseline was measured: the overhead columns are empty.", ""]
    for mode in disagg_modes:
        lines += [f"## {mode['name']} vs colocated", ""]
        lines += main_table(analysis.comparison_rows(results, mode), output_len, results.get("block_size_tokens"))
        lines += ["", f"Transfers of {mode['name']}, from the decode node's metrics read around each request:", ""]
        lines += [*transfer_table(mode), ""]
    lines += ["## Bandwidth", "", *bandwidth_lines(results), "", "## Latency per mode", "",
              *latency_table(results), ""]
    problems = warnings(results)
    if problems:
        lines += ["## Warnings", "", *(f"- {problem}" for problem in problems), ""]
    lines += ["## Definitions", "", *(f"- {text}" for text in DEFINITIONS), "", "## Workload", "",
              *_workload_lines(results), "", "## Plots", ""]
    lines += [f"![{title}]({name})" for name, title in PLOTS]
    return "\n".join(lines) + "\n"


def _workload_lines(results: dict[str, Any]) -> list[str]:
    settings = results.get("settings") or {}
    lines = [f"- prompt lengths requested {settings.get('requested_prompt_lens')}, measured "
             f"{settings.get('prompt_lens')} (capped at context {results.get('max_model_len') or '?'} − output)",
             f"- prompts: random token ids, exact lengths: {settings.get('exact_lengths')}, seed "
             f"{settings.get('seed')} (a different seed per mode and length, so no prompt repeats)"]
    lines += [f"- {mode['name']}: {mode['url']}" + (f" (decode metrics: {mode['decode_metrics_url']})"
                                                   if mode.get("decode_metrics_url") else "")
              for mode in results["modes"]]
    lines += [f"- {note}" for note in results.get("notes") or []]
    return lines
