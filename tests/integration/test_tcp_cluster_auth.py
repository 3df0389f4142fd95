"""Without the API key or the cluster token: 401, and nothing runs. On real processes: the session's tcp
cluster (its nodes require the cluster token) and routers started here, one with an API key and one with a
wrong cluster token. "Nothing runs" is read from both vLLM servers' own counters."""

from __future__ import annotations

import httpx
import pytest

from tests.integration import vllm_metrics
from tests.integration.checks import _env, assert_serves_and_drained, extra_router, info_url
from tests.integration.prompts import prompt_of
from tests.integration.test_equality import run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
WORK = ("vllm:request_success_total", "vllm:prompt_tokens_total", "vllm:num_requests_running",
        "vllm:num_requests_waiting")
API_KEY = "sk-test-router-key"


def _work(cluster) -> dict[str, tuple[float, ...]]:
    """What each node has done or is doing, by its own metrics."""
    result = {}
    for url in (cluster.prefill_vllm_url, cluster.decode_vllm_url):
        metrics = vllm_metrics.read(url)
        result[url] = tuple(metrics.get(key, 0.0) for key in WORK)
    return result


def _body(cluster, tag: str) -> dict:
    return {"model": cluster.model_name, "prompt": prompt_of(cluster.model_dir, 20, tag=tag), "max_tokens": 4,
            "temperature": 0}


def _assert_401(resp: httpx.Response, what: str) -> None:
    assert resp.status_code == 401, (what, resp.status_code, resp.text[:300])
    assert resp.json()["error"]["code"] == "invalid_api_key", (what, resp.text[:300])


def test_nodes_refuse_every_call_without_the_cluster_token_and_run_nothing(tcp_cluster):
    before = _work(tcp_cluster)
    body = _body(tcp_cluster, "[no-token]")
    chat = {**body, "messages": [{"role": "user", "content": body.pop("prompt")}]}
    for url in (tcp_cluster.prefill_vllm_url, tcp_cluster.decode_vllm_url):
        for headers in ({}, {"Authorization": "Bearer not-the-token"}):
            for path, payload in (("/v1/completions", {**body, "prompt": "hi"}), ("/v1/chat/completions", chat),
                                  ("/invocations", {**body, "prompt": "hi"}), ("/tokenize", {"prompt": "hi"})):
                _assert_401(httpx.post(f"{url}{path}", json=payload, headers=headers, timeout=30), f"{url}{path}")
            _assert_401(httpx.get(f"{url}/v1/models", headers=headers, timeout=30), f"{url}/v1/models")
            _assert_401(httpx.get(f"{info_url(url)}/info", headers=headers, timeout=30), f"{url} /info")
        assert httpx.get(f"{url}/health", timeout=30).status_code == 200  # liveness and metrics stay open
        assert httpx.get(f"{info_url(url)}/health", timeout=30).status_code == 200
        ok = httpx.get(f"{url}/v1/models", headers=tcp_cluster.node_headers, timeout=30)
        assert ok.status_code == 200 and ok.json()["data"][0]["id"] == tcp_cluster.model_name
    assert _work(tcp_cluster) == before, "a refused call ran something"
    assert_serves_and_drained(tcp_cluster, "[after-no-token]")


def test_router_refuses_without_its_api_key_and_a_router_without_the_token_runs_nothing(tcp_cluster):
    prefill = [tcp_cluster.prefill_vllm_url]
    wrong_token = _env(tcp_cluster, DISAGG_CLUSTER_TOKEN="not-the-cluster-token")
    with extra_router(tcp_cluster, prefill, env=_env(tcp_cluster, DISAGG_API_KEY=API_KEY)) as keyed, \
            extra_router(tcp_cluster, prefill, env=wrong_token, healthy=False) as outsider:
        body = _body(tcp_cluster, "[api-key]")
        before = _work(tcp_cluster)
        for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": API_KEY}):
            _assert_401(httpx.post(f"{keyed}/v1/completions", json=body, headers=headers, timeout=30), "router")
            _assert_401(httpx.get(f"{keyed}/v1/models", headers=headers, timeout=30), "router /v1/models")
        refused = httpx.post(f"{outsider}/v1/completions", json=body, timeout=30)
        assert refused.status_code == 503 and "cluster token" in refused.json()["error"]["message"], refused.text
        assert _work(tcp_cluster) == before, "a refused request ran something"

        served = httpx.post(f"{keyed}/v1/completions", json={**body, "return_token_ids": True},
                            headers={"Authorization": f"Bearer {API_KEY}"}, timeout=300)
        assert served.status_code == 200, served.text
        colocated = run(tcp_cluster.baseline_url, "completions", {**body, "return_token_ids": True})
        assert served.json()["choices"][0]["token_ids"] == colocated["token_ids"]
        assert_serves_and_drained(tcp_cluster, "[after-api-key]")
