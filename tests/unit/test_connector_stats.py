"""Our connectors' stats through vLLM's protocol: workers' lists merge, an interval is taken and reset, the
API server rebuilds the stats and metrics from plain data by the connector's class methods."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest

pytest.importorskip("vllm")

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram  # noqa: E402

from transport.kv_tier.connector import KvTierConnector  # noqa: E402
from transport.kv_tier.stats import KvTierPromMetrics, KvTierStats  # noqa: E402
from transport.tcp.connector import DisaggTcpConnector  # noqa: E402
from transport.tcp.stats import TcpKVConnectorStats, TcpPromMetrics  # noqa: E402


def test_two_workers_intervals_merge_and_the_taken_interval_leaves_an_empty_one():
    worker_a, worker_b = TcpKVConnectorStats(), TcpKVConnectorStats()
    assert worker_a.is_empty()
    worker_a.record_pull(2 * 2**20, 0.5)
    worker_b.record_pull(2**20, 0.5, kv_nbytes=4 * 2**20)
    worker_b.record_failed_pull()
    taken = worker_b.clone_and_reset()
    assert worker_b.is_empty() and not taken.is_empty()
    merged = worker_a.aggregate(taken)
    assert merged.data["pull_bytes"] == [2 * 2**20, 2**20]
    assert merged.data["pull_kv_bytes"] == [2 * 2**20, 4 * 2**20]
    summary = merged.reduce()
    assert summary["Num successful transfers"] == 2 and summary["Num failed transfers"] == 1
    assert summary["Avg MB per transfer"] == 1.5 and summary["Xfer throughput (MB/s)"] == 3.0


def test_tier_stats_refuse_an_unknown_name_and_sum_per_interval():
    stats = KvTierStats()
    stats.record("hit_blocks", 3)
    stats.record("hit_blocks", 2)
    with pytest.raises(KeyError, match="unknown KV tier stat"):
        stats.record("hits")
    assert stats.clone_and_reset().reduce() == {"tier hit blocks": 5}
    assert stats.is_empty()


@pytest.mark.parametrize("connector,stats_cls,prom_cls", [
    (DisaggTcpConnector, TcpKVConnectorStats, TcpPromMetrics),
    (KvTierConnector, KvTierStats, KvTierPromMetrics),
])
def test_the_api_server_rebuilds_stats_and_metrics_by_the_connector_class(connector, stats_cls, prom_cls):
    key = stats_cls.LISTS[0]
    rebuilt = connector.build_kv_connector_stats({key: [1]})
    assert type(rebuilt) is stats_cls and rebuilt.data == {key: [1]}
    assert type(connector.build_kv_connector_stats()) is stats_cls and connector.build_kv_connector_stats().is_empty()
    registry = CollectorRegistry()
    types = {cls: functools.partial(cls, registry=registry) for cls in (Counter, Gauge, Histogram)}
    metrics = connector.build_prom_metrics(SimpleNamespace(kv_transfer_config=None), types, ["engine"], {0: ["0"]})
    assert type(metrics) is prom_cls


def test_tcp_metrics_count_wire_and_restored_bytes_apart():
    registry = CollectorRegistry()
    types = {cls: functools.partial(cls, registry=registry) for cls in (Counter, Gauge, Histogram)}
    metrics = TcpPromMetrics(SimpleNamespace(kv_transfer_config=None), types, ["engine"], {0: ["0"]})
    metrics.observe({"pull_seconds": [0.1, 0.2], "pull_bytes": [10, 20], "pull_kv_bytes": [40, 80],
                     "failed_pulls": [1]})
    value = registry.get_sample_value
    assert value("vllm:disagg_tcp_kv_pulled_bytes_total", {"engine": "0"}) == 30
    assert value("vllm:disagg_tcp_kv_restored_bytes_total", {"engine": "0"}) == 120
    assert value("vllm:disagg_tcp_kv_failed_pulls_total", {"engine": "0"}) == 1
    assert value("vllm:disagg_tcp_kv_pull_seconds_count", {"engine": "0"}) == 2
