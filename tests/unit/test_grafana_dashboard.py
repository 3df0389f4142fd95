"""The Grafana dashboard in deploy/grafana/ only queries series that exist: the router's, our TCP
connector's, and the vLLM series our integration tests read from real nodes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from router.metrics import RouterMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "disagg-dashboard.json"
TCP_STATS = Path(__file__).resolve().parents[2] / "transport" / "tcp" / "stats.py"
# vLLM's own series, as read from real nodes by tests/integration (vllm_metrics.py, test_equality.py).
VLLM_SERIES = {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
               "vllm:nixl_xfer_time_seconds", "vllm:nixl_bytes_transferred", "vllm:prompt_tokens_by_source"}
SUFFIXES = ("_bucket", "_sum", "_count", "_total")
METRIC = re.compile(r"\b((?:vllm:|disagg_)[a-z0-9_:]+)")


def _base(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _router_series() -> set[str]:
    metrics = RouterMetrics()
    exposition = generate_latest(metrics.registry).decode()
    return {family.name for family in text_string_to_metric_families(exposition)}


def test_every_panel_queries_known_series():
    dashboard = json.loads(DASHBOARD.read_text())
    known = _router_series() | VLLM_SERIES | set(re.findall(r'"(vllm:disagg_tcp_kv_[a-z_]+)"', TCP_STATS.read_text()))
    assert len(known) > 20
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(exprs) >= 14
    unknown = {name for expr in exprs for name in METRIC.findall(expr) if _base(name) not in known}
    assert not unknown, f"dashboard queries series nobody exports: {sorted(unknown)}"


def test_panels_have_unique_ids_and_a_datasource_variable():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in dashboard["panels"])
