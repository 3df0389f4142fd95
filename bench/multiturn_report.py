"""The multi-turn benchmark's numbers (`summarize`: one run's turns in, a dict out) and its Markdown report
(`render`: results.json's dict in, a string out). Pure functions. What each figure means: `DEFINITIONS`.
"""

from __future__ import annotations

import statistics
from typing import Any

from bench.metrics import percentile
from bench.multiturn_columns import HITS, NODE_COLUMNS, QUERIES

DEFINITIONS = (
    "Turns are numbered from 1. *On their node*: turns 2+ served by the node that served the conversation's "
    "previous turn (the serving node: the one whose `vllm:prefix_cache_queries` moved, prefill nodes in disagg "
    "mode).",
    "*Hit tokens*: the serving node's `vllm:prefix_cache_hits` over each turn. *Ideal*: the turn's reusable "
    "tokens, the longest prefix of its prompt that some earlier prompt of the run had in full blocks, on any "
    "node (never the last token). *Hit rate vs ideal* = hit tokens / ideal: 100 % is a router that always "
    "finds the node holding the prefix. *Token hit rate* = hit tokens / prompt tokens.",
    "*TTFT turn 2 / turn 1*: per conversation whose first two turns were served by the same node, the second "
    "turn's TTFT (client side, streamed) over the first's; the median over conversations.",
    "Per node: counter deltas over the run; KV MB = tokens x the node's KV bytes per token.",
)


def _ms(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"count": 0, "mean_ms": None, "p50_ms": None}
    return {"count": len(values), "mean_ms": statistics.fmean(values) * 1000,
            "p50_ms": percentile(values, 50) * 1000}


def _served(turn: dict[str, Any], key: str) -> float:
    return turn["node_deltas"].get(turn["node"], {}).get(key, 0.0) if turn.get("node") else 0.0


def summarize(turns: list[dict[str, Any]]) -> dict[str, Any]:
    """One run's figures from its turns (TurnResult.to_json() dicts, in sending order)."""
    ok = [t for t in turns if t["ok"]]
    by_conversation: dict[int, dict[int, dict[str, Any]]] = {}
    for t in ok:
        by_conversation.setdefault(t["conversation"], {})[t["turn"]] = t
    later = [(c[n - 1], c[n]) for c in by_conversation.values() for n in c if n > 0 and n - 1 in c]
    same = [b["node"] is not None and b["node"] == a["node"] for a, b in later]
    ratios = [c[1]["ttft_s"] / c[0]["ttft_s"] for c in by_conversation.values()
              if 0 in c and 1 in c and c[0]["node"] and c[0]["node"] == c[1]["node"] and c[0]["ttft_s"]
              and c[1]["ttft_s"] is not None]
    hits, queries = sum(_served(t, HITS) for t in ok), sum(_served(t, QUERIES) for t in ok)
    ideal = [t["reusable_tokens"] for t in ok]
    totals: dict[str, dict[str, float]] = {}
    for t in turns:
        for node, deltas in t["node_deltas"].items():
            for key, value in deltas.items():
                totals.setdefault(node, {})[key] = totals.setdefault(node, {}).get(key, 0.0) + value
    turn_numbers = sorted({t["turn"] for t in ok})
    return {
        "requests": len(turns), "ok": len(ok),
        "on_their_node": {"turns": len(same), "count": sum(same), "fraction": sum(same) / len(same) if same else None},
        "hit_tokens": hits, "prompt_tokens": queries,
        "ideal_tokens": sum(ideal) if ideal and None not in ideal else None,
        "hit_rate_vs_ideal": hits / sum(ideal) if ideal and None not in ideal and sum(ideal) else None,
        "token_hit_rate": hits / queries if queries else None,
        "ttft_by_turn": {str(n + 1): _ms([t["ttft_s"] for t in ok if t["turn"] == n and t["ttft_s"] is not None])
                         for n in turn_numbers},
        "ttft_turn2_over_turn1": statistics.median(ratios) if ratios else None,
        "ttft_ratio_conversations": len(ratios),
        "node_totals": totals,
    }


def _fmt(value: Any, fmt: str = "{:,.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def _side_by_side(runs: list[dict[str, Any]]) -> list[str]:
    names = [run["policy"] for run in runs]
    rows = [("requests ok", lambda s: f"{s['ok']} / {s['requests']}"),
            ("turns 2+ on their conversation's node",
             lambda s: f"{s['on_their_node']['count']} / {s['on_their_node']['turns']}"
                       f" ({_fmt(s['on_their_node']['fraction'], '{:.0%}')})"),
            ("prefix-cache hit tokens (serving nodes)", lambda s: _fmt(s["hit_tokens"])),
            ("ideal reusable tokens", lambda s: _fmt(s["ideal_tokens"])),
            ("**hit rate vs ideal**", lambda s: f"**{_fmt(s['hit_rate_vs_ideal'], '{:.1%}')}**"),
            ("token hit rate (hits / prompt tokens)", lambda s: _fmt(s["token_hit_rate"], "{:.1%}"))]
    turns = sorted({n for run in runs for n in run["summary"]["ttft_by_turn"]}, key=int)
    for n in turns:
        rows.append((f"TTFT turn {n} ms, p50 (mean)", lambda s, n=n: _ttft(s, n)))
    rows.append(("**TTFT turn 2 / turn 1, same node (median)**",
                 lambda s: f"**{_fmt(s['ttft_turn2_over_turn1'], '{:.2f}')}** "
                           f"({s['ttft_ratio_conversations']} conversations)"))
    lines = ["| | " + " | ".join(names) + " |", "|:---|" + "---:|" * len(names)]
    lines += [f"| {label} | " + " | ".join(get(run["summary"]) for run in runs) + " |" for label, get in rows]
    return lines


def _ttft(summary: dict[str, Any], turn: str) -> str:
    stats = summary["ttft_by_turn"].get(turn)
    if not stats or not stats["count"]:
        return "-"
    return f"{stats['p50_ms']:,.0f} ({stats['mean_ms']:,.0f})"


def _node_table(run: dict[str, Any], nodes: list[dict[str, Any]]) -> list[str]:
    lines = ["| node | role | " + " | ".join(c.title for c in NODE_COLUMNS) + " |",
             "|:---|:---|" + "---:|" * len(NODE_COLUMNS)]
    for node in nodes:
        deltas = run["summary"]["node_totals"].get(node["name"], {})
        cells = [c.render(deltas, node.get("kv_bytes_per_token")) for c in NODE_COLUMNS]
        lines.append(f"| {node['name']} | {node['role']} | " + " | ".join(cells) + " |")
    return lines


def render(results: dict[str, Any]) -> str:
    """The report of a results.json dict (bench.multiturn_cli)."""
    workload, runs = results["workload"], results["runs"]
    out = ["# bench multiturn: prefix-aware routing vs the others", "",
           f"Model **{results['model']}**; {results['timestamp']}. Workload: {workload['conversations']} "
           f"conversations x {workload['turns']} turns ({workload['requests']} requests per policy), "
           f"{results['settings']['max_tokens']} answer tokens per turn (temperature 0, ignore_eos), one turn "
           f"at a time. {workload['note']}. Each policy ran its own conversations (the same generator, seed "
           "offset by the run), so no run found another's prompts cached.", "",
           "## Side by side", "", *_side_by_side(runs), ""]
    for run in runs:
        out += [f"## Nodes, {run['policy']} ({run['url']})", "", *_node_table(run, results["nodes"]), ""]
        if run.get("router"):
            out += ["Router: " + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(run["router"].items())), ""]
    out += ["## Definitions", "", *[f"- {line}" for line in DEFINITIONS], ""]
    return "\n".join(out)
