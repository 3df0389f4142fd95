"""A decode node's vLLM server killed with SIGKILL mid-stream: the client gets an SSE `error` event and then
`[DONE]` (never a silent truncation), the node's supervisor restarts the server (`--restart-on-crash`),
the router takes the node back and serves it again (disaggregated == colocated), and the prefill node
is left holding no KV blocks (pulled and released, or freed by the lease). (Runs on the tcp cluster, after test_transport_tcp.py.)"""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import pytest

from tests.integration import vllm_metrics
from tests.integration.checks import assert_serves_and_drained
from tests.integration.cluster_manager import KV_LEASE_S
from tests.integration.prompts import prompt_of
from tests.integration.test_equality import run

pytestmark = pytest.mark.integration
RESTART_TIMEOUT_S = 240.0


def _info_url(vllm_url: str) -> str:
    return f"http://127.0.0.1:{int(vllm_url.rsplit(':', 1)[1]) + 1}"


def _wait(condition, timeout_s: float, what: str) -> None:
    deadline_s = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline_s, f"{what} not within {timeout_s:.0f} s"
        time.sleep(1.0)


def _get_ok(url: str, headers: dict[str, str]) -> dict | None:
    try:
        resp = httpx.get(url, headers=headers, timeout=5)
    except httpx.HTTPError:
        return None
    return resp.json() if resp.status_code == 200 else None


@pytest.mark.timeout(600)
def test_decode_killed_mid_stream_errors_explicitly_then_is_restarted_and_used_again(tcp_cluster):
    decode_info = _info_url(tcp_cluster.decode_vllm_url)
    old_pid = httpx.get(f"{decode_info}/info", headers=tcp_cluster.node_headers, timeout=10).json()["pid"]
    body = {"model": tcp_cluster.model_name, "prompt": prompt_of(tcp_cluster.model_dir, 40, tag="[crash]"),
            "max_tokens": 400, "temperature": 0, "ignore_eos": True, "stream": True}
    lines: list[str] = []
    with httpx.stream("POST", f"{tcp_cluster.router_url}/v1/completions", json=body, timeout=120) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            lines.append(line)
            if len(lines) == 3:  # tokens are flowing: kill the decode node's server, its whole group
                os.killpg(os.getpgid(old_pid), signal.SIGKILL)
    data = [line for line in lines if line.startswith("data:")]
    assert "event: error" in lines, lines[-5:]
    error = json.loads(data[-2][5:])["error"]
    assert error["message"] and error["type"], error
    assert data[-1] == "data: [DONE]"
    assert len(data) < 200, "the stream went on after its server was killed"

    def restarted() -> bool:
        info = _get_ok(f"{decode_info}/info", tcp_cluster.node_headers)
        return bool(info and info["pid"] != old_pid and info["engine_ready"])

    _wait(restarted, RESTART_TIMEOUT_S, "the decode node's vLLM server restarted")
    routers = (tcp_cluster.router_url, tcp_cluster.baseline_url)  # each notices on its own health check
    _wait(lambda: all(_get_ok(f"{url}/health", {}) is not None for url in routers), 60,
          "both routers took the node back")
    again = {**body, "max_tokens": 8, "stream": False, "return_token_ids": True}
    disagg, colocated = (run(url, "completions", again) for url in (tcp_cluster.router_url, tcp_cluster.baseline_url))
    assert disagg["usage"]["completion_tokens"] == 8 and disagg["token_ids"] == colocated["token_ids"]
    _wait(lambda: vllm_metrics.read(tcp_cluster.prefill_vllm_url).get("vllm:kv_cache_usage_perc", 1.0) == 0.0,
          KV_LEASE_S + 60, "the prefill node freed the blocks nobody pulled")
    assert_serves_and_drained(tcp_cluster, "[after-decode-crash]")
