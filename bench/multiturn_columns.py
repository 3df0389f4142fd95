"""The per-node columns of the multi-turn report: one column per metric a node exports, easy to extend.

Each `NodeColumn` turns a node's counter deltas over a run (`{sample name: delta}`, names as
`bench.kv_metrics.parse` gives them, e.g. `vllm:prefix_cache_hits_total` or
`vllm:prompt_tokens_by_source_total[local_cache_hit]`) and the node's KV bytes per token into one number
(None: not known there, shown as "-"). Another metric source adds its own columns with one call, e.g. a KV
tier connector that exports its hits:

    from bench.multiturn_columns import NodeColumn, add_node_column
    add_node_column(NodeColumn("tier hit tokens", lambda d, kv: d.get("vllm:disagg_kv_tier_hit_tokens_total")))

from the module that defines those metrics (imported before the report is written; `disagg bench multiturn`
imports `EXTRA_COLUMN_MODULES`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

Deltas = dict[str, float]
SOURCE = "vllm:prompt_tokens_by_source_total[{}]"
QUERIES, HITS = "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"
EXTRA_COLUMN_MODULES: tuple[str, ...] = ()  # modules that call add_node_column when imported


@dataclass(frozen=True)
class NodeColumn:
    title: str
    value: Callable[[Deltas, int | None], float | None]  # (counter deltas, KV bytes per token) -> value
    fmt: str = "{:,.0f}"

    def render(self, deltas: Deltas, kv_bytes_per_token: int | None) -> str:
        value = self.value(deltas, kv_bytes_per_token)
        return "-" if value is None else self.fmt.format(value)


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def _mb(tokens: float, kv_bytes_per_token: int | None) -> float | None:
    return tokens * kv_bytes_per_token / 1e6 if kv_bytes_per_token else None


NODE_COLUMNS: list[NodeColumn] = [
    NodeColumn("prompt tokens", lambda d, kv: d.get(QUERIES, 0.0)),
    NodeColumn("prefix-cache hit tokens", lambda d, kv: d.get(HITS, 0.0)),
    NodeColumn("hit rate", lambda d, kv: _ratio(d.get(HITS, 0.0), d.get(QUERIES, 0.0)), "{:.1%}"),
    NodeColumn("computed tokens", lambda d, kv: d.get(SOURCE.format("local_compute"), 0.0)),
    NodeColumn("KV computed MB", lambda d, kv: _mb(d.get(SOURCE.format("local_compute"), 0.0), kv), "{:,.1f}"),
    NodeColumn("KV from own cache MB", lambda d, kv: _mb(d.get(SOURCE.format("local_cache_hit"), 0.0), kv),
               "{:,.1f}"),
    NodeColumn("KV loaded MB (P/D pull or tier)",
               lambda d, kv: _mb(d.get(SOURCE.format("external_kv_transfer"), 0.0), kv), "{:,.1f}"),
]


def add_node_column(column: NodeColumn) -> None:
    """Add a column to every multi-turn report written from now on (replacing one with the same title)."""
    NODE_COLUMNS[:] = [c for c in NODE_COLUMNS if c.title != column.title] + [column]


def load_extra_columns() -> None:
    for name in EXTRA_COLUMN_MODULES:
        importlib.import_module(name)
