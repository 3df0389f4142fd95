"""The router's Prometheus metrics after real requests through stub vLLM servers."""

from __future__ import annotations

import json
import logging

import httpx

from tests.support.stub_cluster import completion, stub_cluster, wait_for

KV_BYTES_PER_TOKEN = 46_080


def _node_info(url: str) -> dict:
    return {"role": "decode", "vllm_url": url, "model_path": "/m", "served_model_name": "stub-model",
            "transport": "tcp", "transport_reason": "test", "kv_host": "127.0.0.1", "kv_port": 1,
            "kv_bytes_per_token": KV_BYTES_PER_TOKEN, "kv_role": "kv_consumer", "engine_ready": True}


def test_latency_histograms_kv_bytes_and_outcomes_are_exported():
    with stub_cluster(health_interval_s=0.1) as c:
        decode_url = httpx.get(f"{c.url}/health").json()["nodes"][1]["url"]
        c.decodes[0].info = _node_info(decode_url)
        assert wait_for(lambda: httpx.get(f"{c.url}/health").json()["nodes"][1]["info"] is not None)
        with httpx.stream("POST", f"{c.url}/v1/completions", json=completion(max_tokens=6, stream=True),
                          timeout=10) as resp:
            assert resp.status_code == 200 and resp.read().endswith(b"data: [DONE]\n\n")
        assert httpx.post(f"{c.url}/v1/completions", json=completion(max_tokens=0)).status_code == 400

        def m(name: str) -> float:
            return c.metric(name)

        assert m('disagg_router_requests_total{endpoint="completions",mode="disagg",status="ok"}') == 1
        assert m('disagg_router_requests_total{endpoint="completions",mode="disagg",status="error_400"}') == 1
        assert m('disagg_router_inter_token_seconds_count{mode="disagg"}') == 5  # 6 chunks, 5 gaps
        for name in ('disagg_router_ttft_seconds_count{mode="disagg"}', 'disagg_router_e2e_seconds_count{mode="disagg"}',
                     "disagg_router_prefill_seconds_count", "disagg_router_decode_ttft_seconds_count",
                     "disagg_router_queue_seconds_count", "disagg_router_request_kv_bytes_count"):
            assert m(name) == 1, name  # the 400 has no latency breakdown
        prompt_tokens = len("hello there".split())  # what the stub prefill reports
        assert m("disagg_router_request_kv_bytes_sum") == prompt_tokens * KV_BYTES_PER_TOKEN
        assert m("disagg_router_kv_bytes_total") == prompt_tokens * KV_BYTES_PER_TOKEN
        assert m('disagg_router_nodes_healthy{role="decode"}') == 1
        assert m('disagg_router_failures_total{reason="invalid_value"}') == 1


def test_the_logged_decode_time_spans_the_decode_call_so_it_is_never_below_its_first_chunk(caplog):
    """decode_s counts from the decode call sent, as decode_ttft_s does, even when the node is slow to answer
    with headers (SLOWDECODE: the stub sleeps 0.3 s before them, as a node pulling KV first may)."""
    caplog.set_level(logging.INFO, logger="router.requests")
    with stub_cluster() as c:
        body = completion(prompt="hello SLOWDECODE", max_tokens=3, stream=True)
        with httpx.stream("POST", f"{c.url}/v1/completions", json=body, timeout=10) as resp:
            assert resp.status_code == 200 and resp.read().endswith(b"data: [DONE]\n\n")
        assert wait_for(lambda: any("request {" in r.getMessage() for r in caplog.records))
    line = next(r.getMessage() for r in caplog.records if "request {" in r.getMessage())
    record = json.loads(line.split("request ", 1)[1])
    assert record["decode_ttft_s"] >= 0.3 and record["decode_s"] >= record["decode_ttft_s"]
    assert record["total_s"] >= record["decode_s"] and "decode_sent_s" not in record
