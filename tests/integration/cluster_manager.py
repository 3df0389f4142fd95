"""Real local clusters for the integration tests, one at a time (the box has 2 cores).

`ClusterManager.get(transport)` returns a running `disagg up --local` cluster with a colocated baseline
router, stopping the previous one if it used another transport. Every cluster, when it is stopped, must
have no request running and no KV block in use on either node, and must leave no process behind.
Both vLLM servers run without prefix caching, so a disaggregated request must pull its KV from the
prefill node and a colocated request must compute it: the comparison cannot be served from a cache.
Every cluster runs with a cluster token (nodes and routers, through the environment): a direct call to a
node's vLLM server needs `Cluster.node_headers`. The tcp cluster also has the block server's test-only fault
file (`Cluster.fault_file`, empty = no fault; see transport/tcp/faults.py).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.integration import vllm_metrics
from tests.support.threaded_server import free_port

STARTUP_TIMEOUT_S = 600.0
KV_LEASE_S = 20.0  # shorter than the default 30 s so the lease test waits less; long enough for a loaded box
KV_TRANSFER_TIMEOUT_S = 8.0  # tcp: shorter than the default 30 s so the stalled-transfer test waits less
DRAIN_TIMEOUT_S = 60.0


class ClusterError(AssertionError):
    """The cluster failed to start, leaked, or left processes behind."""


@dataclass(frozen=True)
class Cluster:
    transport: str
    router_url: str
    baseline_url: str
    prefill_vllm_url: str
    decode_vllm_url: str
    model_name: str
    model_dir: Path
    log_dir: Path
    fault_file: Path | None = None  # tcp: DISAGG_TCP_FAULT_FILE of the nodes
    cluster_token: str = field(default="", repr=False)  # DISAGG_CLUSTER_TOKEN of the nodes and routers

    @property
    def node_headers(self) -> dict[str, str]:
        """What a direct call to a node's vLLM server or /info needs."""
        return {"Authorization": f"Bearer {self.cluster_token}"}


class ClusterManager:
    def __init__(self, model_dir: Path, log_root: Path) -> None:
        self.model_dir, self.log_root = model_dir, log_root
        self.current: tuple[Cluster, subprocess.Popen, int] | None = None

    def get(self, transport: str) -> Cluster:
        if self.current is not None and self.current[0].transport == transport:
            return self.current[0]
        self.stop()
        self.current = self._start(transport)
        return self.current[0]

    def _start(self, transport: str) -> tuple[Cluster, subprocess.Popen, int]:
        log_dir = self.log_root / f"cluster-{transport}"
        log_dir.mkdir(parents=True, exist_ok=True)
        router, baseline = free_port(), free_port()
        base = 18000 + (os.getpid() % 500) * 4  # vLLM + info ports: base, base+1 (prefill), base+2, base+3 (decode)
        argv = [sys.executable, "-m", "disagg", "up", "--local", "--model", str(self.model_dir),
                "--transport", transport, "--port", str(router), "--baseline-port", str(baseline),
                "--prefill-port", str(base), "--decode-port", str(base + 2),
                "--kv-port-base", str(25000 + (os.getpid() % 500) * 2), "--no-prefix-caching",
                "--kv-lease-s", str(KV_LEASE_S), "--kv-transfer-timeout-s", str(KV_TRANSFER_TIMEOUT_S),
                "--restart-on-crash", "1", "--log-dir", str(log_dir)]
        env = {k: v for k, v in os.environ.items() if k not in ("DISAGG_TCP_FAULT_FILE", "DISAGG_CLUSTER_TOKEN")}
        fault_file, token = None, secrets.token_hex(16)
        env.update(DISAGG_CLUSTER_TOKEN=token)
        if transport == "tcp":
            fault_file = log_dir / "tcp-fault"
            fault_file.write_text("")
            env.update(DISAGG_TCP_FAULT_FILE=str(fault_file))
        up = subprocess.Popen(argv, stdout=open(log_dir / "up.log", "wb"), stderr=subprocess.STDOUT,
                              start_new_session=True, env=env)
        cluster = Cluster(transport=transport, router_url=f"http://127.0.0.1:{router}",
                          baseline_url=f"http://127.0.0.1:{baseline}", prefill_vllm_url=f"http://127.0.0.1:{base}",
                          decode_vllm_url=f"http://127.0.0.1:{base + 2}", model_name=self.model_dir.name,
                          model_dir=self.model_dir, log_dir=log_dir, fault_file=fault_file, cluster_token=token)
        _wait_ready(up, cluster)
        return cluster, up, base

    def stop(self) -> None:
        """Check the running cluster is drained, stop it, and check nothing is left behind."""
        if self.current is None:
            return
        cluster, up, base = self.current
        self.current = None
        try:
            drained = _drained(cluster) if up.poll() is None else {"up": f"exited with {up.returncode}"}
        finally:
            _stop(up)
        left = _processes_with(f"--port {base} ", f"--port {base + 2} ", str(cluster.log_dir))
        if drained or left:
            raise ClusterError(f"{cluster.transport} cluster: still in use {drained}; processes left {left}")


def _wait_ready(up: subprocess.Popen, cluster: Cluster) -> None:
    deadline_s = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline_s:
        if up.poll() is not None:
            raise ClusterError(f"disagg up exited with {up.returncode}:\n"
                               f"{(cluster.log_dir / 'up.log').read_text()[-3000:]}")
        try:
            if all(httpx.get(f"{u}/health", timeout=2).status_code == 200
                   for u in (cluster.router_url, cluster.baseline_url)):
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    _stop(up)
    raise ClusterError(f"cluster not ready after {STARTUP_TIMEOUT_S} s")


def _drained(cluster: Cluster) -> dict[str, tuple[float, float, float]]:
    """Nodes that still have requests running/waiting or KV blocks in use after DRAIN_TIMEOUT_S."""
    deadline_s = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        busy = {}
        for name, url in (("prefill", cluster.prefill_vllm_url), ("decode", cluster.decode_vllm_url)):
            m = vllm_metrics.read(url)
            state = (m.get("vllm:num_requests_running", -1), m.get("vllm:num_requests_waiting", -1),
                     m.get("vllm:kv_cache_usage_perc", -1))
            if state != (0.0, 0.0, 0.0):
                busy[name] = state
        if not busy or time.monotonic() > deadline_s:
            return busy
        time.sleep(1.0)


def _processes_with(*needles: str) -> list[str]:
    """Command lines of live (non-zombie) processes containing any needle."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and any(n in text for n in needles):
            found.append(text[:200])
    return found


def _stop(up: subprocess.Popen) -> None:
    if up.poll() is None:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
