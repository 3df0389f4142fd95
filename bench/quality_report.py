"""`disagg bench quality`'s results.json, Markdown report and plot. Pure: dicts in, text and a PNG out
(matplotlib's Agg backend, object API, imported only in `plot`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.quality import PromptResult, summary
from bench.report import fmt, table

# wire bytes over fp32 KV bytes (SmolLM2's rows of 64; `transport.tcp.wire_dtype.ratio`)
WIRE_RATIO_FP32 = {"native": 1.0, "bf16": 0.5, "fp16": 0.5, "int8": 68 / 256}


def results_json(results: Sequence[PromptResult], wire_dtypes: Sequence[str], settings: dict[str, Any]) -> dict:
    """Everything measured: per mode summaries, per length summaries, and every prompt's tokens."""
    lengths = sorted({r.length for r in results}, key=[r.length for r in results].index)
    return {
        "settings": settings,
        "summary": [summary(results, mode) for mode in wire_dtypes],
        "by_length": {length: [summary([r for r in results if r.length == length], mode) for mode in wire_dtypes]
                      for length in lengths},
        "prompts": [{"index": r.index, "length": r.length, "prompt_tokens": r.prompt_tokens,
                     "colocated": list(r.colocated.token_ids),
                     "modes": {mode: {"token_ids": list(c.token_ids), "logprobs": [round(x, 6) for x in c.logprobs],
                                      **vars(r.comparison(mode))} for mode, c in r.modes.items()}}
                    for r in results],
    }


def render_markdown(data: dict[str, Any]) -> str:
    settings = data["settings"]
    lines = ["# bench quality: KV wire dtypes vs colocated", "",
             f"Model **{settings.get('model')}**, {settings.get('num_prompts')} prompts of the fixed set "
             f"(`bench.quality_prompts`, seed {settings.get('seed')}), {settings.get('max_tokens')} greedy tokens each "
             f"(ignore_eos), disaggregated over the tcp transport with `kv_wire_dtype` per request; "
             f"{settings.get('timestamp', '')}.", ""]
    header = ["wire dtype", "wire bytes / fp32", "identical / prompts", "identical %", "first 4 tokens equal",
              "first divergence min", "first divergence median", "mean abs dlogp", "max abs dlogp"]
    rows = [[s["mode"], f"{WIRE_RATIO_FP32.get(s['mode'], float('nan')):.4f}", f"{s['identical']} / {s['prompts']}",
             fmt(100 * s["identical_share"], 1, suffix=" %"), f"{s['first_4_equal']} / {s['prompts']}",
             fmt(s["first_divergence_min"], 0), fmt(s["first_divergence_median"], 1),
             fmt(s["mean_abs_logprob_diff"], 6), fmt(s["max_abs_logprob_diff"], 6)] for s in data["summary"]]
    lines += table(header, rows) + ["", "## Identical to colocated, by prompt length", ""]
    modes = [s["mode"] for s in data["summary"]]
    by_length = []
    for length, summaries in data["by_length"].items():
        tokens = [p["prompt_tokens"] for p in data["prompts"] if p["length"] == length]
        by_length.append([length, f"{min(tokens)}-{max(tokens)}"] +
                         [f"{s['identical']} / {s['prompts']}" for s in summaries])
    lines += table(["length", "prompt tokens", *modes], by_length)
    lines += ["", "## Definitions", "",
              "- *identical*: all generated tokens equal the colocated run's (the decode node alone, no KV pull).",
              "- *first divergence*: index (0 = the first generated token) of the first token that differs, over the "
              "prompts that differ.",
              "- *mean abs dlogp*: per prompt, the mean |log p(colocated) − log p(mode)| of the chosen tokens before "
              "the first divergence (same context, same token), then the mean over prompts.",
              "- The first token always comes from the prefill node (computed from the exact KV); the decode node "
              "continues from prompt + first token with the pulled KV in the wire dtype.",
              "", "![identical share and log-probability difference per wire dtype](quality.png)", ""]
    if settings.get("command"):
        lines += ["## Command", "", f"    {settings['command']}", ""]
    return "\n".join(lines)


def plot(data: dict[str, Any], path: Path) -> Path:
    """Two panels: share of prompts identical to colocated, and mean |Δ log p|, per wire dtype."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9.0, 4.0), dpi=110)
    FigureCanvasAgg(figure)
    shares, diffs = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    modes = [s["mode"] for s in data["summary"]]
    shares.bar(modes, [100 * (s["identical_share"] or 0) for s in data["summary"]], color="tab:blue")
    shares.axhline(90, color="gray", linestyle="--", label="90 % target (int8)")
    shares.set_ylim(0, 105)
    shares.set_ylabel("prompts identical to colocated (%)")
    shares.set_title(f"{data['settings'].get('max_tokens')} tokens, {data['settings'].get('num_prompts')} prompts")
    shares.legend(loc="lower left")
    values = [s["mean_abs_logprob_diff"] or 0.0 for s in data["summary"]]
    bars = diffs.bar(modes, [v if v > 0 else float("nan") for v in values], color="tab:orange")
    diffs.bar_label(bars, ["0" if v == 0 else f"{v:.1e}" for v in values], fontsize=8)
    if any(v > 0 for v in values):
        diffs.set_yscale("log")
    diffs.set_ylabel("mean |Δ log p| of chosen tokens")
    zero = [mode for mode, v in zip(modes, values) if v == 0]
    diffs.set_title("before the first divergence" + (f" ({', '.join(zero)}: exactly 0)" if zero else ""))
    for axes in (shares, diffs):
        axes.grid(True, axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path
