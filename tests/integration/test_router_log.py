"""Runs last (file order): after everything, no request is running and no KV block is held on either node,
and the router logged and exported the per-request breakdown."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.integration import vllm_metrics

pytestmark = pytest.mark.integration


def test_no_request_or_kv_block_left_on_either_node(cluster):
    deadline_s = time.monotonic() + 60
    while True:
        state = {}
        for name, url in (("prefill", cluster.prefill_vllm_url), ("decode", cluster.decode_vllm_url)):
            m = vllm_metrics.read(url)
            state[name] = (m.get("vllm:num_requests_running", -1), m.get("vllm:num_requests_waiting", -1),
                           m.get("vllm:kv_cache_usage_perc", -1))
        if all(v == (0.0, 0.0, 0.0) for v in state.values()) or time.monotonic() > deadline_s:
            break
        time.sleep(1.0)
    assert state == {"prefill": (0.0, 0.0, 0.0), "decode": (0.0, 0.0, 0.0)}, state


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
