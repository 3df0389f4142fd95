"""The tier's counters through vLLM's KV connector stats and Prometheus hooks (`vllm:disagg_kv_tier_*`).

Both sides record into `KvTierStats` (plain lists of numbers, so they cross vLLM's process boundary): the
scheduler side its lookups (`lookups`, `hit_blocks`, `miss_blocks`, `lookup_errors`), the worker side its
loads and stores (`loaded_blocks`, `loaded_bytes`, `load_seconds`, `load_errors`, `corrupt_entries`,
`stored_blocks`, `stored_bytes`, `store_errors`, `dropped_stores`) and the backend's eviction count as it
last saw it (`evicted_total`). vLLM aggregates them per interval, logs `reduce()` and hands the raw lists to
`KvTierPromMetrics.observe` in the API server.

A block is a hit when the lookup found it (and vLLM was told to load it), a miss when the lookup did not
(absent, or the tier was skipped: down, slow, breaker open). A hit whose load then fails (evicted since,
corrupt, tier down) is a load error and is recomputed; `corrupt_entries` counts the corrupt ones among them.
"""

from __future__ import annotations

from typing import Any

from vllm.config import VllmConfig
from vllm.distributed.kv_transfer.kv_connector.v1.metrics import KVConnectorPromMetrics, PromMetric, PromMetricT

from transport.connector_stats import ListStats, per_engine_maker

COUNTERS = ("lookups", "hit_blocks", "miss_blocks", "lookup_errors", "loaded_blocks", "loaded_bytes",
            "load_errors", "corrupt_entries", "stored_blocks", "stored_bytes", "store_errors", "dropped_stores")
_LISTS = (*COUNTERS, "load_seconds", "evicted_total")
ERROR_OPS = {"lookup": "lookup_errors", "load": "load_errors", "store": "store_errors"}
_DOCS = {
    "lookups": "Requests whose prompt blocks were looked up in the KV tier (prefill nodes).",
    "hit_blocks": "Prompt blocks found in the KV tier by a lookup and loaded instead of computed.",
    "miss_blocks": "Prompt blocks looked up and not found in the KV tier, or not looked up because the tier "
                   "was down or slow (circuit breaker open): computed.",
    "loaded_bytes": "Bytes of KV loaded from the KV tier into the KV cache.",
    "loaded_blocks": "Blocks loaded from the KV tier into the KV cache.",
    "corrupt_entries": "KV tier entries that failed a check (length, CRC-32C, layout, hash): removed and recomputed.",
    "stored_blocks": "Blocks written to the KV tier.",
    "stored_bytes": "Bytes written to the KV tier (entries: header and block).",
    "dropped_stores": "Blocks not written to the KV tier: the writer's queue was full or the tier failed.",
}


class KvTierStats(ListStats):
    LISTS = _LISTS

    def record(self, name: str, value: float = 1) -> None:
        if name not in self.LISTS:
            raise KeyError(f"unknown KV tier stat {name!r}")
        self.data.setdefault(name, []).append(value)

    def reduce(self) -> dict[str, int | float]:
        """The interval's totals for vLLM's `KV Transfer metrics:` log line."""
        data = self.data
        summary: dict[str, int | float] = {f"tier {key.replace('_', ' ')}": sum(data.get(key, []))
                                           for key in COUNTERS if data.get(key)}
        seconds = data.get("load_seconds", [])
        if seconds:
            summary["tier avg load ms"] = round(sum(seconds) / len(seconds) * 1e3, 3)
        if data.get("evicted_total"):
            summary["tier evicted (total)"] = max(data["evicted_total"])
        return summary


class KvTierPromMetrics(KVConnectorPromMetrics):
    """`vllm:disagg_kv_tier_*` on the node's /metrics."""

    def __init__(self, vllm_config: VllmConfig, metric_types: dict[type[PromMetric], type[PromMetricT]],
                 labelnames: list[str], per_engine_labelvalues: dict[int, list[object]]) -> None:
        super().__init__(vllm_config, metric_types, labelnames, per_engine_labelvalues)
        per_engine = per_engine_maker(labelnames, per_engine_labelvalues)

        self.counters = {key: per_engine(self._counter_cls, f"vllm:disagg_kv_tier_{key}", doc)
                         for key, doc in _DOCS.items()}
        errors = self._counter_cls(name="vllm:disagg_kv_tier_errors", labelnames=[*labelnames, "op"],
                                   documentation="Failed KV tier operations by op: lookup (the request was "
                                   "computed), load (the blocks were recomputed), store (the blocks were not kept).")
        self.errors = {op: {idx: errors.labels(*values, op) for idx, values in per_engine_labelvalues.items()}
                       for op in ERROR_OPS}
        self.load_seconds = per_engine(self._histogram_cls, "vllm:disagg_kv_tier_load_seconds",
                                       "Seconds to load one request's blocks from the KV tier.",
                                       buckets=[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5])
        self.evicted = per_engine(self._gauge_cls, "vllm:disagg_kv_tier_evicted_entries",
                                  "Entries the KV tier evicted to hold its memory cap, as last seen by this node "
                                  "(redis: the server's evicted_keys; disk: this node's evictions).",
                                  multiprocess_mode="mostrecent")

    def observe(self, transfer_stats_data: dict[str, Any], engine_idx: int = 0) -> None:
        for key, metric in self.counters.items():
            total = sum(transfer_stats_data.get(key, []))
            if total:
                metric[engine_idx].inc(total)
        for op, key in ERROR_OPS.items():
            total = sum(transfer_stats_data.get(key, []))
            if total:
                self.errors[op][engine_idx].inc(total)
        for seconds in transfer_stats_data.get("load_seconds", []):
            self.load_seconds[engine_idx].observe(seconds)
        if transfer_stats_data.get("evicted_total"):
            self.evicted[engine_idx].set(max(transfer_stats_data["evicted_total"]))
