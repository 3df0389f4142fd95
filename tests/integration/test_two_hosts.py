"""`disagg up FILE` across two real network stacks: prefill in namespace spark-01 and decode in spark-02,
started over ssh, the routers here. Greedy output equals the colocated baseline token for token over
`tcp` and over `nixl` (UCX kept on TCP so that it cannot use shared memory between the namespaces); the
KV bytes crossed the veth link between the namespaces; with the link rate-limited, the transfer time per
request follows the bandwidth; a second `up` starts nothing; `disagg down` leaves no process behind.
The clusters run with a cluster token file: a node's vLLM server and /info refuse a request without the
token (401) and answer one with it; the tcp KV servers bind every address (`kv_bind`).
A cluster file with an unreachable host, a busy port, a bad field, a host without disagg or a missing
token file fails fast and starts nothing.
Skipped (with the reason) only where network namespaces cannot be created."""

from __future__ import annotations

import subprocess
import time

import httpx
import pytest

from tests.integration import vllm_metrics
from tests.integration.prompts import prompt_of
from tests.integration.test_equality import _body, disagg_and_colocated, run
from tests.integration.two_host_cluster import (ADDRESSES, Harness, TwoHostClusters, cluster_file_text, disagg,
                                                namespaces_unavailable, write_token_file)

pytestmark = pytest.mark.integration
KV_BYTES_PER_TOKEN = 46_080  # SmolLM2-135M in fp32
BLOCK_TOKENS = 128
PULLED = {"tcp": "vllm:disagg_tcp_kv_pulled_bytes_total", "nixl": "vllm:nixl_bytes_transferred_sum"}
PULL_TIME = {"tcp": ("vllm:disagg_tcp_kv_pull_seconds_sum", "vllm:disagg_tcp_kv_pull_seconds_count")}


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory):
    reason = namespaces_unavailable()
    if reason:
        pytest.skip(reason)
    h = Harness(tmp_path_factory.mktemp("two-hosts"))
    try:
        h.run("up")
        yield h
    finally:
        h.run("down")


@pytest.fixture(scope="module")
def two_hosts(harness: Harness, clusters, tmp_path_factory: pytest.TempPathFactory):
    clusters.stop()  # the local integration cluster: one cluster at a time on this box
    manager = TwoHostClusters(harness, clusters.model_dir, tmp_path_factory.mktemp("two-host-clusters"))
    try:
        yield manager
    finally:
        manager.stop()


# --- a bad cluster file fails fast and starts nothing (no vLLM needed) ---------------------------------

@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", ["unreachable", "busy-port", "bad-field", "no-disagg", "no-token"])
def test_bad_cluster_fails_fast_naming_the_problem_and_starts_nothing(harness, tmp_path, case):
    token_file = tmp_path / "cluster-token"
    text = cluster_file_text(harness, "tcp", tmp_path / "run", 18999, 18998, tmp_path, token_file)
    expected = {"unreachable": "spark-02 (root@10.77.2.2): unreachable over ssh",
                "busy-port": "spark-01 (root@10.77.1.2): port 8100 on 10.77.1.2 (prefill.port) is already in use",
                "bad-field": "decode.host: 'spark-03' is not in [hosts]",
                "no-disagg": "spark-02 (root@10.77.2.2): disagg is not installed at /opt/none/.venv/bin/disagg",
                "no-token": f"spark-02 (root@10.77.2.2): token_file {token_file}: not found"}[case]
    if case != "no-token":
        write_token_file(token_file)
    if case == "unreachable":
        text = text.replace('[hosts.spark-02]\n', '[hosts.spark-02]\nssh_port = 2\n')
    elif case == "no-disagg":
        text = text.replace('[hosts.spark-02]\n', '[hosts.spark-02]\ndisagg = "/opt/none/.venv/bin/disagg"\n')
    elif case == "bad-field":
        text = text.replace('[decode]\nhost = "spark-02"', '[decode]\nhost = "spark-03"')
    (tmp_path / "config.json").write_text("{}")  # the "model" folder: checked, never loaded
    file = tmp_path / "cluster.toml"
    file.write_text(text)
    blocker = _listen_in("spark-01", ADDRESSES["spark-01"][0], 8100) if case == "busy-port" else None
    try:
        started_s = time.monotonic()
        result = disagg("up", str(file), timeout_s=60)
        elapsed_s = time.monotonic() - started_s
    finally:
        if blocker:
            blocker.kill()
            blocker.wait()
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr and (case == "bad-field" or "nothing was started" in result.stderr)
    assert str(file) in result.stderr or case != "bad-field"
    assert elapsed_s < 30
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").glob("*.pid"))
    assert harness.foreign_pids() == {"spark-01": [], "spark-02": []}


def _listen_in(namespace: str, address: str, port: int) -> subprocess.Popen:
    code = (f"import socket,time; s=socket.socket(); s.bind(('{address}',{port})); s.listen(); "
            "print('listening', flush=True); time.sleep(60)")
    proc = subprocess.Popen(["ip", "netns", "exec", namespace, "python3", "-c", code], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "listening"
    return proc


# --- real clusters, one transport after the other -------------------------------------------------------

def _equal_and_crossed_the_link(two_hosts: TwoHostClusters, harness: Harness, transport: str, size: int,
                                endpoint: str, stream: bool) -> None:
    cluster = two_hosts.get(transport).cluster
    prompt = prompt_of(cluster.model_dir, size, tag=f"[two-hosts-{transport}-{size}-{endpoint}]")
    link_before = harness.kv_bytes()
    disagg_out, colocated, deltas = disagg_and_colocated(cluster, endpoint, _body(cluster, endpoint, prompt, stream))
    link_after = harness.kv_bytes()

    assert disagg_out["text"] == colocated["text"] and disagg_out["token_ids"] == colocated["token_ids"]
    assert disagg_out["usage"]["completion_tokens"] > 0
    prompt_tokens = disagg_out["usage"]["prompt_tokens"]
    pulled_tokens = deltas.get("vllm:prompt_tokens_by_source_total[external_kv_transfer]", 0.0)
    computed = deltas.get("vllm:prompt_tokens_by_source_total[local_compute]", 0.0)
    assert pulled_tokens >= prompt_tokens - 1 and computed <= 1, (pulled_tokens, computed)
    pulled_bytes = deltas.get(PULLED[transport], 0.0)
    assert pulled_bytes >= (prompt_tokens - BLOCK_TOKENS) * KV_BYTES_PER_TOKEN and pulled_bytes > 0
    sent = link_after["spark-01"][0] - link_before["spark-01"][0]
    received = link_after["spark-02"][1] - link_before["spark-02"][1]
    assert sent >= pulled_bytes and received >= pulled_bytes, (sent, received, pulled_bytes)
    # ... and only the KV: the link carries no HTTP (that goes through the root namespace).
    assert sent < pulled_bytes * 1.2 + 1_000_000, (sent, pulled_bytes)


CASES = [(12, "completions", False), (300, "chat", True)]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("size,endpoint,stream", CASES, ids=["completions-12", "chat-stream-300"])
def test_tcp_across_namespaces_equals_colocated_and_crosses_the_link(two_hosts, harness, size, endpoint, stream):
    _equal_and_crossed_the_link(two_hosts, harness, "tcp", size, endpoint, stream)


@pytest.mark.timeout(60)
def test_nodes_answer_only_requests_with_the_cluster_token(two_hosts):
    cluster = two_hosts.get("tcp").cluster
    for vllm_url in (cluster.prefill_vllm_url, cluster.decode_vllm_url):
        address, port = vllm_url.rsplit(":", 1)
        info_url = f"{address}:{int(port) + 1}"  # info_port: the default, vLLM's port + 1
        for url in (f"{vllm_url}/v1/models", f"{info_url}/info"):
            assert httpx.get(url, timeout=10).status_code == 401, url
            assert httpx.get(url, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401, url
            assert httpx.get(url, headers=cluster.node_headers, timeout=10).status_code == 200, url
        assert httpx.get(f"{info_url}/health", timeout=10).status_code == 200  # liveness stays open
    # kv_bind = "0.0.0.0": the KV block server listens on every address of its host
    listening = subprocess.run(["ip", "netns", "exec", "spark-01", "ss", "-ltnH", "sport", "= :5601"],
                               capture_output=True, text=True, check=True).stdout
    assert "0.0.0.0:5601" in listening, listening


@pytest.mark.timeout(120)
def test_second_up_starts_no_duplicates_and_logs_come_from_the_host(two_hosts):
    current = two_hosts.get("tcp")
    before = disagg("status", str(current.file))
    again = disagg("up", str(current.file), timeout_s=100)
    after = disagg("status", str(current.file))
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stdout
    assert after.returncode == before.returncode == 0 and after.stdout == before.stdout  # same pids, all healthy
    logs = disagg("logs", str(current.file), "prefill", "--lines", "100000")  # read over ssh in spark-01
    assert logs.returncode == 0 and "disagg prefill --settings" in logs.stdout
    assert "prefill vLLM server ready" in logs.stdout


def _pull_seconds(cluster, prompt: str, num_requests: int) -> tuple[float, float]:
    """Mean seconds and bytes per KV pull over `num_requests` disaggregated requests."""
    time_sum, time_count = PULL_TIME["tcp"]
    before = vllm_metrics.read(cluster.decode_vllm_url)
    for i in range(num_requests):
        body = {"model": cluster.model_name, "prompt": f"{i} {prompt}", "max_tokens": 2, "temperature": 0}
        run(cluster.router_url, "completions", body)
    after = vllm_metrics.read(cluster.decode_vllm_url)
    count = vllm_metrics.delta(before, after, time_count)
    assert count == num_requests, f"{count} pulls for {num_requests} requests"
    return (vllm_metrics.delta(before, after, time_sum) / count,
            vllm_metrics.delta(before, after, PULLED["tcp"]) / count)


@pytest.mark.timeout(300)
def test_rate_limited_link_slows_the_transfer_as_the_bandwidth_predicts(two_hosts, harness):
    cluster = two_hosts.get("tcp").cluster
    prompt = prompt_of(cluster.model_dir, 370, tag="[two-hosts-rate]")
    measured = {"unlimited": _pull_seconds(cluster, prompt, 2)}
    try:
        for rate_bits in (1_000_000_000, 250_000_000):
            harness.run("limit", f"{rate_bits // 1_000_000}mbit")
            measured[rate_bits] = _pull_seconds(cluster, prompt, 2)
    finally:
        harness.run("unlimit")
    unlimited_s, kv_bytes = measured["unlimited"]
    assert kv_bytes >= 2 * BLOCK_TOKENS * KV_BYTES_PER_TOKEN
    report = {k: round(v[0], 4) for k, v in measured.items()}
    for rate_bits in (1_000_000_000, 250_000_000):
        seconds, moved = measured[rate_bits]
        predicted_s = moved * 8 / rate_bits
        # The link cannot be beaten, and the limit accounts for (nearly) all of the time.
        assert 0.9 * predicted_s <= seconds <= 1.6 * predicted_s + unlimited_s + 0.05, (rate_bits, predicted_s, report)
    ratio = measured[250_000_000][0] / measured[1_000_000_000][0]
    assert 2.5 <= ratio <= 5.0, (ratio, report)  # a quarter of the bandwidth: about four times the time
    print(f"KV pull per request ({kv_bytes / 1e6:.1f} MB): {report}")


@pytest.mark.timeout(300)
def test_tcp_down_leaves_no_process_behind(two_hosts):
    two_hosts.get("tcp")
    two_hosts.stop()  # raises ClusterError on anything left running or not drained


@pytest.mark.timeout(300)
@pytest.mark.parametrize("size,endpoint,stream", CASES, ids=["completions-12", "chat-stream-300"])
def test_nixl_across_namespaces_equals_colocated_and_crosses_the_link(two_hosts, harness, size, endpoint, stream):
    _equal_and_crossed_the_link(two_hosts, harness, "nixl", size, endpoint, stream)


@pytest.mark.timeout(300)
def test_nixl_down_leaves_no_process_behind(two_hosts):
    two_hosts.get("nixl")
    two_hosts.stop()
