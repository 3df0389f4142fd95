"""What the fault tests share: how each one ends (a normal request still succeeds, token for token, and nothing
is left in use), the router's metrics, extra processes a test starts beside the session's cluster (a router,
a second prefill node), and their memory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from core.host import terminate
from node.settings import EngineSettings, NodeSettings
from tests.integration.cluster_manager import Cluster, _drained, _processes_with
from tests.integration.prompts import prompt_of
from tests.integration.test_equality import disagg_and_colocated
from tests.support.threaded_server import free_port

EXTERNAL = "vllm:prompt_tokens_by_source_total[external_kv_transfer]"


def info_url(vllm_url: str) -> str:
    """A node supervisor's /info URL from its vLLM server's URL (the info port is the next one)."""
    host, port = vllm_url.rsplit(":", 1)
    return f"{host}:{int(port) + 1}"


def router_sample(router_url: str, name: str, **labels: str) -> float:
    """The sum of the router's samples called `name` whose labels include `labels`."""
    text = httpx.get(f"{router_url}/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and labels.items() <= sample.labels.items())


def assert_serves_and_drained(cluster: Cluster, tag: str, router_url: str | None = None) -> None:
    """A normal greedy request through the router equals colocated with KV pulled from the prefill node, then
    no request runs or waits and no KV block is used on either node, and the router holds no request."""
    router_url = router_url or cluster.router_url
    body = {"model": cluster.model_name, "prompt": prompt_of(cluster.model_dir, 40, tag=tag), "max_tokens": 8,
            "temperature": 0, "ignore_eos": True, "return_token_ids": True}
    disagg, colocated, deltas = disagg_and_colocated(cluster, "completions", body, router_url=router_url)
    assert disagg["token_ids"] == colocated["token_ids"] and len(disagg["token_ids"]) == 8
    assert deltas.get(EXTERNAL, 0.0) >= disagg["usage"]["prompt_tokens"] - 1, "the KV was not pulled"
    assert _drained(cluster) == {}, "a request or KV block is still in use"
    for gauge in ("disagg_router_requests_in_flight", "disagg_router_requests_queued"):
        assert router_sample(router_url, gauge) == 0, gauge


def _wait_until(condition, timeout_s: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline_s = time.monotonic() + timeout_s
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {process.returncode}")
        assert time.monotonic() < deadline_s, f"{what}: not within {timeout_s:.0f} s"
        time.sleep(0.5)


def _answers(url: str, want_status: int | None = 200) -> bool:
    try:
        status = httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return False
    return want_status is None or status == want_status


def _env(cluster: Cluster, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISAGG_")}
    return {**env, "DISAGG_CLUSTER_TOKEN": cluster.cluster_token, **extra}


@contextmanager
def extra_router(cluster: Cluster, prefill_vllm_urls: list[str], *args: str, env: dict[str, str] | None = None,
                 healthy: bool = True) -> Iterator[str]:
    """A router process in front of the given prefill nodes and the cluster's decode node (its URL).
    `env` replaces the cluster's token environment; `healthy=False` waits only until it answers."""
    port = free_port()
    argv = [sys.executable, "-m", "disagg", "router", "--port", str(port),
            "--decode", info_url(cluster.decode_vllm_url), *args]
    for url in prefill_vllm_urls:
        argv += ["--prefill", info_url(url)]
    log = open(cluster.log_dir / f"router-{port}.log", "wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env or _env(cluster))
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until(lambda: _answers(f"{url}/health", 200 if healthy else None), 60, f"router {url}", proc)
        yield url
    finally:
        terminate(proc, 30)
        log.close()


@contextmanager
def second_prefill_node(cluster: Cluster, startup_timeout_s: float = 400.0) -> Iterator[tuple[str, subprocess.Popen]]:
    """A second tcp prefill node (its vLLM URL and supervisor process), on the prefill node's core;
    killed with its whole vLLM server group when the block ends, leaving no process."""
    port, kv_port = free_port(with_next=True), free_port()  # /info on port + 1
    settings = NodeSettings.build(role="prefill", model=str(cluster.model_dir), transport="tcp", port=port,
                                  info_port=port + 1, kv_port=kv_port, cpu_cores="0",
                                  engine=EngineSettings(kv_lease_s=20, prefix_caching=False))
    argv = [sys.executable, "-m", "disagg", "prefill", "--settings", settings.to_json()]
    log = open(cluster.log_dir / f"prefill-{port}.log", "wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=_env(cluster), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until(lambda: _answers(f"{info_url(url)}/health"), startup_timeout_s, "second prefill node", proc)
        yield url, proc
    finally:
        kill_node(url, proc, cluster)
        log.close()
        _wait_until(lambda: not _processes_with(f"--port {port} "), 30, "second prefill node's processes gone")


def node_pid(cluster: Cluster, vllm_url: str) -> int:
    """The pid of the node's vLLM server (from its supervisor's /info)."""
    return httpx.get(f"{info_url(vllm_url)}/info", headers=cluster.node_headers, timeout=10).json()["pid"]


def kill_node(vllm_url: str, supervisor: subprocess.Popen, cluster: Cluster) -> None:
    """SIGKILL a node: its supervisor and its vLLM server's whole process group (API server, engine)."""
    try:
        vllm_group = os.getpgid(node_pid(cluster, vllm_url))
    except (httpx.HTTPError, KeyError, ProcessLookupError, TypeError):
        vllm_group = None
    for group in (supervisor.pid, vllm_group):
        if group is not None:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
    supervisor.wait(timeout=30)


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants."""
    root = psutil.Process(pid)
    total = 0
    for proc in (root, *root.children(recursive=True)):
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def router_pid(router_url: str) -> int:
    port = router_url.rsplit(":", 1)[1]
    for text, pid in _cmdlines():
        if " router " in text and f"--port {port} " in f"{text} ":
            return pid
    raise AssertionError(f"no router process listening on port {port}")


def _cmdlines() -> Iterator[tuple[str, int]]:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            yield cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace").strip(), int(cmdline.parent.name)
        except OSError:
            continue
