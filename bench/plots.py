"""`bench compare`'s PNG plots, drawn from results.json with matplotlib's Agg backend (no display needed).

- ttft.png: mean TTFT vs prompt length, one line per mode.
- transfer.png: measured transfer time vs moved KV bytes per disaggregated mode, with the fitted line
  (slope → effective bandwidth) and the time the measured link bandwidth predicts.
- e2e.png: mean end-to-end latency per mode, grouped by prompt length.
matplotlib is imported here only (it is the `bench` extra), and only the object API is used, so nothing
touches pyplot's global state.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bench import analysis
from bench.analysis import MB

log = logging.getLogger(__name__)

FIGSIZE_IN = (7.0, 4.5)
DPI = 110


def _figure() -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGSIZE_IN, dpi=DPI)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, format="png")
    log.info("wrote %s", path)
    return path


def _series(mode: dict[str, Any], key: str) -> tuple[list[float], list[float]]:
    """(prompt tokens, mean of `key` in ms) for the lengths where it was measured."""
    xs, ys = [], []
    for entry in mode["lengths"]:
        value = entry[key]["mean"]
        if value is not None:
            xs.append(entry.get("prompt_tokens_mean") or entry["prompt_len"])
            ys.append(value)
    return xs, ys


def plot_ttft(results: dict[str, Any], path: Path) -> Path:
    """Mean TTFT vs prompt length, one line per mode."""
    figure, axes = _figure()
    for mode in results["modes"]:
        xs, ys = _series(mode, "ttft_ms")
        axes.plot(xs, ys, marker="o", label=mode["name"])
    axes.set_xlabel("prompt tokens")
    axes.set_ylabel("TTFT, mean (ms)")
    axes.set_title("Time to first token")
    axes.grid(True, alpha=0.3)
    axes.legend()
    return _save(figure, path)


def plot_transfer(results: dict[str, Any], path: Path) -> Path:
    """Measured transfer time vs moved bytes, the fitted line, and the link-bandwidth prediction."""
    figure, axes = _figure()
    all_bytes: list[float] = []
    for mode in analysis.modes_of(results, "disagg"):
        points = analysis.transfer_points(mode)
        xs, ys = [x for x, _ in points], [y for _, y in points]
        all_bytes += xs
        dots = axes.plot([x / MB for x in xs], ys, "o", label=f"{mode['name']} measured")
        fit = analysis.fit_line(xs, ys)
        bandwidth = analysis.effective_bandwidth_gb_s(fit)
        if fit is not None:
            ends = [min(xs), max(xs)]
            label = f"{mode['name']} fit: {bandwidth:.2f} GB/s effective" if bandwidth else f"{mode['name']} fit"
            axes.plot([x / MB for x in ends], [fit.slope * x + fit.intercept for x in ends], "-",
                      color=dots[0].get_color(), label=label)
    link_gb_s = (results.get("link") or {}).get("gb_per_s")
    if all_bytes and link_gb_s:
        ends = [0.0, max(all_bytes)]
        axes.plot([x / MB for x in ends], [analysis.predicted_transfer_ms(x, link_gb_s) for x in ends], "--",
                  color="gray", label=f"link {link_gb_s:.2f} GB/s (predicted)")
    if not all_bytes:
        axes.text(0.5, 0.5, "no measured transfers", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel("KV bytes per transfer (MB)")
    axes.set_ylabel("transfer time (ms)")
    axes.set_title("KV transfer time vs size")
    axes.grid(True, alpha=0.3)
    if all_bytes:
        axes.legend()
    return _save(figure, path)


def plot_e2e(results: dict[str, Any], path: Path) -> Path:
    """Mean end-to-end latency, bars grouped by prompt length, one bar per mode."""
    figure, axes = _figure()
    modes = results["modes"]
    lengths = sorted({entry["prompt_len"] for mode in modes for entry in mode["lengths"]})
    width = 0.8 / max(len(modes), 1)
    for index, mode in enumerate(modes):
        by_len = {entry["prompt_len"]: entry["e2e_ms"]["mean"] for entry in mode["lengths"]}
        positions = [slot + (index - (len(modes) - 1) / 2) * width for slot in range(len(lengths))]
        axes.bar(positions, [by_len.get(length) or 0.0 for length in lengths], width, label=mode["name"])
    axes.set_xticks(range(len(lengths)))
    axes.set_xticklabels([str(length) for length in lengths])
    axes.set_xlabel("prompt tokens")
    output_len = (results.get("settings") or {}).get("output_len", "?")
    axes.set_ylabel("end-to-end latency, mean (ms)")
    axes.set_title(f"End-to-end latency ({output_len} output tokens)")
    axes.grid(True, axis="y", alpha=0.3)
    if modes:
        axes.legend()
    return _save(figure, path)


def write_plots(results: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """ttft.png, transfer.png and e2e.png in `out_dir`; returns {name: path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return {"ttft": plot_ttft(results, out_dir / "ttft.png"),
            "transfer": plot_transfer(results, out_dir / "transfer.png"),
            "e2e": plot_e2e(results, out_dir / "e2e.png")}
