"""Bytes and seconds of every TCP KV transfer, through vLLM's connector stats and Prometheus hooks.

Bytes are counted as they cross the wire (`vllm:disagg_tcp_kv_pulled_bytes_total` on the decode node,
`..._served_bytes_total` on the prefill node); the KV they restore, in the cache's dtype, is
`vllm:disagg_tcp_kv_restored_bytes_total`. With the native wire dtype the two are equal.

Workers record into `TcpKVConnectorStats`; vLLM aggregates it across workers, logs `reduce()` as
`KV Transfer metrics: ...` in the server log and passes the raw lists to `TcpPromMetrics.observe`.
"""

from __future__ import annotations

from typing import Any

from vllm.config import VllmConfig
from vllm.distributed.kv_transfer.kv_connector.v1.metrics import KVConnectorPromMetrics, PromMetric, PromMetricT

from transport.connector_stats import ListStats, per_engine_maker

_MIB = 2**20


class TcpKVConnectorStats(ListStats):
    """Per-interval observations of pulls (decode side) and serves (prefill side)."""

    LISTS = ("pull_seconds", "pull_bytes", "pull_kv_bytes", "serve_seconds", "serve_bytes", "failed_pulls",
             "expired_leases", "unauthorized")

    def record_pull(self, nbytes: int, seconds: float, kv_nbytes: int | None = None) -> None:
        """A pull that moved `nbytes` on the wire and restored `kv_nbytes` of KV (default: the same)."""
        self.data["pull_bytes"].append(nbytes)
        self.data["pull_seconds"].append(seconds)
        self.data.setdefault("pull_kv_bytes", []).append(nbytes if kv_nbytes is None else kv_nbytes)

    def record_serve(self, nbytes: int, seconds: float) -> None:
        self.data["serve_bytes"].append(nbytes)
        self.data["serve_seconds"].append(seconds)

    def record_failed_pull(self) -> None:
        self.data["failed_pulls"].append(1)

    def record_expired_lease(self) -> None:
        self.data["expired_leases"].append(1)

    def record_unauthorized(self) -> None:
        self.data["unauthorized"].append(1)

    def reduce(self) -> dict[str, int | float]:
        """The interval's summary for the log line; decode nodes pull, prefill nodes serve."""
        data = self.data
        summary: dict[str, int | float] = {}
        if data["pull_seconds"] or data["failed_pulls"] or not data["serve_seconds"]:
            summary["Num successful transfers"] = len(data["pull_seconds"])
            summary.update(_averages(data["pull_seconds"], data["pull_bytes"], "xfer", "Avg MB per transfer"))
            summary["Num failed transfers"] = len(data["failed_pulls"])
        if data["serve_seconds"]:
            summary["Num served transfers"] = len(data["serve_seconds"])
            summary.update(_averages(data["serve_seconds"], data["serve_bytes"], "serve", "Avg MB served"))
        summary["Num KV expired reqs"] = len(data["expired_leases"])
        if data.get("unauthorized"):
            summary["Num unauthorized frames"] = len(data["unauthorized"])
        return summary


def _averages(seconds: list[float], nbytes: list[int], what: str, mb_label: str) -> dict[str, float]:
    count, total_s, total_mib = len(seconds), sum(seconds), sum(nbytes) / _MIB
    return {
        f"Avg {what} time (ms)": round(total_s / count * 1e3, 3) if count else 0,
        mb_label: round(total_mib / count, 3) if count else 0,
        f"{what.capitalize()} throughput (MB/s)": round(total_mib / total_s, 3) if total_s > 0 else 0,
    }


class TcpPromMetrics(KVConnectorPromMetrics):
    """`vllm:disagg_tcp_kv_*` metrics on the server's /metrics."""

    def __init__(self, vllm_config: VllmConfig, metric_types: dict[type[PromMetric], type[PromMetricT]],
                 labelnames: list[str], per_engine_labelvalues: dict[int, list[object]]) -> None:
        super().__init__(vllm_config, metric_types, labelnames, per_engine_labelvalues)
        time_buckets_s = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
        per_engine = per_engine_maker(labelnames, per_engine_labelvalues)

        self.pull_seconds = per_engine(self._histogram_cls, "vllm:disagg_tcp_kv_pull_seconds",
                                       "Seconds per TCP KV pull (decode side).", buckets=time_buckets_s)
        self.pull_bytes = per_engine(self._counter_cls, "vllm:disagg_tcp_kv_pulled_bytes",
                                     "Bytes of KV pulled over TCP, as moved on the wire (decode side; fewer than "
                                     "the KV restored when the wire dtype is not native).")
        self.pull_kv_bytes = per_engine(self._counter_cls, "vllm:disagg_tcp_kv_restored_bytes",
                                        "Bytes of KV restored into the KV cache by TCP pulls, in the cache's dtype "
                                        "(decode side; pulled/restored is the wire's compression).")
        self.serve_bytes = per_engine(self._counter_cls, "vllm:disagg_tcp_kv_served_bytes",
                                      "Bytes of KV served over TCP (prefill side).")
        self.failed_pulls = per_engine(self._counter_cls, "vllm:disagg_tcp_kv_failed_pulls",
                                       "TCP KV pulls that failed (the request recomputed or errored).")
        self.expired_leases = per_engine(self._counter_cls, "vllm:disagg_tcp_kv_expired_leases",
                                         "Published KV blocks freed because nobody pulled them in time.")
        self.unauthorized = per_engine(self._counter_cls, "vllm:disagg_tcp_kv_unauthorized_frames",
                                       "PULL/RELEASE frames refused for a missing or wrong cluster token "
                                       "(prefill side).")

    def observe(self, transfer_stats_data: dict[str, Any], engine_idx: int = 0) -> None:
        for seconds in transfer_stats_data.get("pull_seconds", []):
            self.pull_seconds[engine_idx].observe(seconds)
        for metric, key in ((self.pull_bytes, "pull_bytes"), (self.pull_kv_bytes, "pull_kv_bytes"),
                            (self.serve_bytes, "serve_bytes"),
                            (self.failed_pulls, "failed_pulls"), (self.expired_leases, "expired_leases"),
                            (self.unauthorized, "unauthorized")):
            total = sum(transfer_stats_data.get(key, []))
            if total:
                metric[engine_idx].inc(total)
