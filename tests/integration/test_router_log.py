"""The router logs and exports the per-request breakdown of a disaggregated request.
(No request or KV block left behind is checked whenever a test cluster is stopped: cluster_manager.py.)"""

from __future__ import annotations

import json

import httpx
import pytest


pytestmark = pytest.mark.integration


def test_router_reports_the_per_request_breakdown(cluster):
    httpx.post(f"{cluster.router_url}/v1/completions",
               json={"model": cluster.model_name, "prompt": "Count: one two", "max_tokens": 4, "stream": True},
               timeout=120).raise_for_status()
    log_lines = [line for line in (cluster.log_dir / "router.log").read_text().splitlines() if "request {" in line]
    record = json.loads(log_lines[-1].split("request ", 1)[1])
    assert record["mode"] == "disagg" and record["status"] == "ok"
    assert record["prefill_s"] > 0 and record["decode_ttft_s"] > 0 and record["decode_s"] >= record["decode_ttft_s"]
    assert record["kv_bytes"] == record["prompt_tokens"] * 46080  # SmolLM2-135M, fp32
    metrics = httpx.get(f"{cluster.router_url}/metrics").text
    assert "disagg_router_kv_bytes_total" in metrics and "disagg_router_decode_ttft_seconds_count" in metrics
