"""`bench compare --load`'s report, from its results.json: report.md and goodput.png (goodput vs request rate, one
line per setup), tpot.png (TPOT p95 vs rate). Pure apart from writing the files; matplotlib through
`bench.plots`' Agg figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from bench.plots import _figure, _save
from bench.report import fmt, table

MB = 1e6
PLOTS = (("goodput.png", "Goodput vs request rate"), ("tpot.png", "TPOT p95 vs request rate"))
DEFINITIONS = (
    "Goodput = requests that succeeded within every SLO / the run's duration (first request sent to last "
    "answer done); *within SLOs* = their share of the requests sent. TPOT = (E2E − TTFT) / (output tokens − 1); "
    "ITL = gap between streamed chunks; *max ITL* = the worst gap of any request (a stall).",
    "KV MB/req = the router's Server-Timing KV bytes (prompt tokens × KV bytes/token) averaged over the "
    "successful requests, 0 for requests that moved none; *remote* = the share that did.",
    "Decisions = the router's `disagg_router_decisions_total{decision, reason}` over the rate's run.",
)


def ratio_rows(results: dict[str, Any]) -> list[tuple[float, float | None, float | None, float | None]]:
    """(rate, primary goodput, best colocated goodput, primary / best) per rate: the primary setup is the first
    whose name starts with `disagg`, the colocated ones those starting with `colocated`."""
    setups = results["setups"]
    primary = next((s for s in setups if s["name"].startswith("disagg")), None)
    baselines = [s for s in setups if s["name"].startswith("colocated")]
    rows = []
    for rate in results["settings"]["rates_per_s"]:
        mine = _goodput(primary, rate) if primary else None
        best = max((g for g in (_goodput(s, rate) for s in baselines) if g is not None), default=None)
        ratio = mine / best if mine is not None and best else None
        rows.append((rate, mine, best, ratio))
    return rows


def _goodput(setup: dict[str, Any], rate: float) -> float | None:
    return next((p["goodput_per_s"] for p in setup["points"] if p["rate_per_s"] == rate), None)


def _pcts(dist: dict[str, Any], keys: Sequence[str] = ("p50", "p95", "p99")) -> str:
    return " / ".join(fmt(dist.get(key), 0) for key in keys)


def render_markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    slo = s["slo_ms"]
    lines = [
        "# bench compare --load: goodput under a request-rate sweep", "",
        f"Model **{results['model']}**, {results['timestamp']}. Command: `{results['command']}`", "",
        f"Workload: {results['workload']}. {s['requests_per_rate']} requests per rate (+{s['num_warmup']} warm-up "
        f"per setup), Poisson arrivals (seed {s['seed']} + rate index), streamed, `ignore_eos`, temperature 0.",
        "",
        f"SLOs: **TTFT ≤ {slo.get('ttft_ms', 0):,.0f} ms and TPOT ≤ {slo.get('tpot_ms', 0):,.0f} ms**. "
        f"{results.get('slo_note', '')}", "",
    ]
    lines += table(["setup", "what", "URL"], [[x["name"], x["description"], x["url"]] for x in results["setups"]])
    names = [x["name"] for x in results["setups"]]
    lines += ["", "## Goodput (requests/s within both SLOs)", ""]
    rows = []
    ratios = {rate: ratio for rate, _, _, ratio in ratio_rows(results)}
    for rate in s["rates_per_s"]:
        rows.append([f"{rate:g}", *[fmt(_goodput(x, rate), 3) for x in results["setups"]],
                     fmt(ratios[rate], 2, suffix="×")])
    lines += table(["rate req/s", *names, "disagg / best colocated"], rows)
    lines += ["", "## Per setup and rate", ""]
    lines += table(["setup", "rate", "ok/sent", "req/s", "goodput", "within SLOs", "TTFT p50/p95/p99 ms",
                    "TPOT p50/p95/p99 ms", "ITL p50/p95/p99 ms", "max ITL ms", "KV MB/req", "remote",
                    "decisions"], [_point_row(x["name"], p) for x in results["setups"] for p in x["points"]])
    lines += ["", "## By request kind", ""]
    lines += table(["setup", "rate", "kind", "sent", "good", "TTFT p50/p95 ms", "TPOT p50/p95 ms",
                    "ITL p95/p99 ms"],
                   [[x["name"], f"{p['rate_per_s']:g}", kind, str(k["num_requests"]), str(k["num_good"]),
                     _pcts(k["ttft_ms"], ("p50", "p95")), _pcts(k["tpot_ms"], ("p50", "p95")),
                     _pcts(k["itl_ms"], ("p95", "p99"))]
                    for x in results["setups"] for p in x["points"] for kind, k in p["by_kind"].items()])
    lines += ["", "## Notes", ""] + [f"- {note}" for note in (*DEFINITIONS, *results.get("notes", []))]
    lines += ["", "## Plots", ""] + [f"![{title}]({name})" for name, title in PLOTS]
    return "\n".join(lines) + "\n"


def _point_row(name: str, p: dict[str, Any]) -> list[str]:
    decisions = ", ".join(f"{key} {count}" for key, count in p["decisions"].items()) or "–"
    kv = p["kv_bytes_per_request"]
    return [name, f"{p['rate_per_s']:g}", f"{p['num_ok']}/{p['num_requests']}", fmt(p["requests_per_s"], 3),
            fmt(p["goodput_per_s"], 3), fmt(100 * p["slo_attainment"], 0, suffix=" %"), _pcts(p["ttft_ms"]),
            _pcts(p["tpot_ms"]), _pcts(p["itl_ms"]), fmt(p["max_itl_ms"], 0), fmt(kv, 2, MB),
            fmt(None if p["kv_share"] is None else 100 * p["kv_share"], 0, suffix=" %"), decisions]


def write(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """report.md, goodput.png and tpot.png in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / "report.md"
    report.write_text(render_markdown(results), encoding="utf-8")
    return [report, _plot(results, out_dir / "goodput.png", lambda p: p["goodput_per_s"], "goodput (req/s within SLOs)"),
            _plot(results, out_dir / "tpot.png", lambda p: p["tpot_ms"]["p95"], "TPOT p95 (ms)",
                  limit=results["settings"]["slo_ms"].get("tpot_ms"))]


def _plot(results: dict[str, Any], path: Path, value: Any, ylabel: str, limit: float | None = None) -> Path:
    figure, axes = _figure()
    for setup in results["setups"]:
        points = [(p["rate_per_s"], value(p)) for p in setup["points"] if value(p) is not None]
        axes.plot([x for x, _ in points], [y for _, y in points], marker="o", label=setup["name"])
    rates = results["settings"]["rates_per_s"]
    if limit is not None:
        axes.axhline(limit, color="grey", linestyle="--", linewidth=1, label="SLO")
    else:  # goodput: the offered rate is the ceiling
        axes.plot(rates, rates, color="grey", linestyle=":", linewidth=1, label="offered rate")
    axes.set_xlabel("request rate (req/s, Poisson)")
    axes.set_ylabel(ylabel)
    axes.set_title(f"{results['model']}: {ylabel} vs request rate")
    axes.grid(True, alpha=0.3)
    axes.legend()
    return _save(figure, path)
