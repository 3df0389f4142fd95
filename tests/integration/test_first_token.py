"""The prefill node's first token goes to the client, and the decode node only continues (issue 14), on real vLLM:

- the decode node computes exactly one token's forward pass before it samples (vLLM's prompt tokens by source:
  the prompt loaded, one computed) and generates `max_tokens - 1` tokens; the answer equals colocated;
- the client has the prefill node's token before the decode node's first chunk reaches the router (the router's
  request log: `ttft_s` < `decode_first_s`);
- a one-token request, and one whose first token ends it (a stop token), are served by the prefill node alone:
  the decode node runs nothing, and no KV is left held;
- an idle cluster, over either transport, uses at most 5 % of one core per node (read from /proc).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest

from tests.integration import vllm_metrics
from tests.integration.cluster_manager import _drained
from tests.integration.prompts import prompt_of
from tests.integration.test_equality import run

pytestmark = pytest.mark.integration
LOCAL = "vllm:prompt_tokens_by_source_total[local_compute]"
EXTERNAL = "vllm:prompt_tokens_by_source_total[external_kv_transfer]"
GENERATED = "vllm:generation_tokens_total"
REQUESTS = "vllm:request_success_total"
IDLE_SECONDS = 30.0
IDLE_CORE_SHARE = 0.05


@pytest.fixture(params=["tcp", "nixl"])
def any_cluster(request, clusters):
    return clusters.get(request.param)


def _completion(cluster, tag: str, **extra) -> dict:
    return {"model": cluster.model_name, "prompt": prompt_of(cluster.model_dir, 300, tag=tag), "max_tokens": 8,
            "temperature": 0, "ignore_eos": True, **extra}


def _request_log(cluster, request_id: str) -> dict:
    for line in (cluster.log_dir / "router.log").read_text().splitlines():
        if "request {" in line and request_id in line:
            return json.loads(line.split("request ", 1)[1])
    raise AssertionError(f"no log line for {request_id}")


def test_the_decode_node_computes_one_token_and_the_client_gets_the_first_one_first(any_cluster):
    cluster = any_cluster
    body = {**_completion(cluster, f"[one-step-{cluster.transport}]"), "stream": True,
            "stream_options": {"include_usage": True}}
    before = vllm_metrics.read(cluster.decode_vllm_url)
    with httpx.stream("POST", f"{cluster.router_url}/v1/completions", json=body, timeout=300) as resp:
        assert resp.status_code == 200
        request_id = resp.headers["x-request-id"]
        lines = [line for line in resp.iter_lines() if line.startswith("data:")]
    after = vllm_metrics.read(cluster.decode_vllm_url)
    delta = {key: vllm_metrics.delta(before, after, key) for key in (LOCAL, EXTERNAL, GENERATED)}
    chunks = [json.loads(line[5:]) for line in lines[:-1]]
    usage = chunks[-1]["usage"]
    colocated = run(cluster.baseline_url, "completions", body)
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == colocated["text"]
    assert usage == colocated["usage"] and usage["completion_tokens"] == 8
    prompt_tokens = usage["prompt_tokens"]
    # its prompt was the prompt + the first token: the prompt loaded, the first token computed, 7 generated
    assert delta == {EXTERNAL: prompt_tokens, LOCAL: 1, GENERATED: 7}, delta
    logged = _request_log(cluster, request_id)
    assert logged["ttft_s"] < logged["decode_first_s"], logged  # the prefill node's token went out first


@pytest.mark.parametrize("case", ["one token", "stop token first"])
def test_a_request_ended_by_its_first_token_is_served_by_the_prefill_node_alone(any_cluster, case):
    cluster = any_cluster
    body = _completion(cluster, f"[alone-{case}-{cluster.transport}]", return_token_ids=True)
    first_id = run(cluster.baseline_url, "completions", {**body, "max_tokens": 1})["token_ids"][0]
    body = {**body, "max_tokens": 1} if case == "one token" else {**body, "stop_token_ids": [first_id],
                                                                   "ignore_eos": False}
    want = run(cluster.baseline_url, "completions", body)
    decode_before = vllm_metrics.read(cluster.decode_vllm_url)
    got = run(cluster.router_url, "completions", body)
    decode_after = vllm_metrics.read(cluster.decode_vllm_url)
    assert got["text"] == want["text"] and got["token_ids"] == want["token_ids"] and len(got["token_ids"]) <= 1
    assert got["usage"] == want["usage"]
    for key in (REQUESTS, GENERATED, LOCAL, EXTERNAL):
        assert vllm_metrics.delta(decode_before, decode_after, key) == 0, key  # the decode node ran nothing
    assert _drained(cluster) == {}, "KV still held"


def test_an_idle_cluster_uses_at_most_5_percent_of_a_core_per_node(any_cluster):
    """Both transports, every process of each node (supervisor, vLLM API server, engine, workers), from /proc
    over IDLE_SECONDS after the cluster has been quiet for a few seconds."""
    cluster = any_cluster
    time.sleep(5)
    nodes = {name: _node_tree(cluster, url) for name, url in (("prefill", cluster.prefill_vllm_url),
                                                               ("decode", cluster.decode_vllm_url))}
    before = {name: _cpu_ticks(pids) for name, pids in nodes.items()}
    time.sleep(IDLE_SECONDS)
    shares = {name: (_cpu_ticks(pids) - before[name]) / os.sysconf("SC_CLK_TCK") / IDLE_SECONDS
              for name, pids in nodes.items()}
    print(f"idle CPU share of one core over {IDLE_SECONDS:.0f} s ({cluster.transport}): {shares}")
    assert all(share <= IDLE_CORE_SHARE for share in shares.values()), shares


def _node_tree(cluster, vllm_url: str) -> list[int]:
    """The node's supervisor and every process of its vLLM server."""
    from core.host import descendants
    from tests.integration.checks import node_pid

    server = node_pid(cluster, vllm_url)
    supervisor = int(Path(f"/proc/{server}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return [supervisor, *descendants(server)]


def _cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime of the process (its threads included)
    return total
