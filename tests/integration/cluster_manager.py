"""Real local clusters for the integration tests, one at a time (the box has 2 cores).

`ClusterManager.get(transport)` returns a running `disagg up --local` cluster with a colocated baseline
router (deploy/local.py, run in this process: its processes die with the test session), stopping the
previous one if it used another transport. Every cluster, when it is stopped, must have no request running
and no KV block in use on either node, and must leave no process behind.
Both vLLM servers run without prefix caching, so a disaggregated request must pull its KV from the
prefill node and a colocated request must compute it: the comparison cannot be served from a cache.
Every cluster runs with a cluster token (nodes and routers, through its token file): a direct call to a
node's vLLM server needs `Cluster.node_headers`. The tcp cluster also has the block server's test-only fault
file (`Cluster.fault_file`, empty = no fault; see transport/tcp/faults.py), in its vLLM servers' environment.
"""

from __future__ import annotations

import os
import secrets
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from deploy import cluster as deploy_cluster
from deploy import local
from node.settings import EngineSettings
from tests.integration import vllm_metrics
from tests.support.threaded_server import free_port

STARTUP_TIMEOUT_S = 600.0
KV_LEASE_S = 20.0  # shorter than the default 30 s so the lease test waits less; long enough for a loaded box
KV_TRANSFER_TIMEOUT_S = 8.0  # tcp: shorter than the default 30 s so the stalled-transfer test waits less
DRAIN_TIMEOUT_S = 60.0
ENGINE = EngineSettings(prefix_caching=False, kv_lease_s=KV_LEASE_S, kv_transfer_timeout_s=KV_TRANSFER_TIMEOUT_S,
                        restart_on_crash=1)


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
    cluster_token: str = field(default="", repr=False)  # in the token file of the nodes and routers

    @property
    def node_headers(self) -> dict[str, str]:
        """What a direct call to a node's vLLM server or /info needs."""
        return {"Authorization": f"Bearer {self.cluster_token}"}


@dataclass
class _Running:
    cluster: Cluster
    deployed: deploy_cluster.Cluster
    stack: ExitStack  # closing it stops the cluster
    base: int  # the prefill vLLM port (decode: base + 2)


class ClusterManager:
    def __init__(self, model_dir: Path, log_root: Path) -> None:
        self.model_dir, self.log_root = model_dir, log_root
        self.current: _Running | None = None

    def get(self, transport: str) -> Cluster:
        if self.current is not None and self.current.cluster.transport == transport:
            return self.current.cluster
        self.stop()
        self.current = self._start(transport)
        return self.current.cluster

    def _start(self, transport: str) -> _Running:
        log_dir = self.log_root / f"cluster-{transport}"
        log_dir.mkdir(parents=True, exist_ok=True)
        router, baseline = free_port(), free_port()
        base = 18000 + (os.getpid() % 500) * 4  # vLLM + info ports: base, base+1 (prefill), base+2, base+3 (decode)
        fault_file, token, env = None, secrets.token_hex(16), {}
        if transport == "tcp":
            fault_file = log_dir / "tcp-fault"
            fault_file.write_text("")
            env["DISAGG_TCP_FAULT_FILE"] = str(fault_file)
        options = local.LocalOptions.build(
            model=str(self.model_dir), transport=transport, port=router, baseline_port=baseline, prefill_port=base,
            decode_port=base + 2, kv_port_base=25000 + (os.getpid() % 500) * 2, env=env, run_dir=str(log_dir),
            ready_timeout_s=STARTUP_TIMEOUT_S, engine=ENGINE)
        stack = ExitStack()
        try:
            deployed = stack.enter_context(local.running(options, token))
        except Exception as exc:
            raise ClusterError(f"the {transport} cluster did not start: {exc}") from exc
        cluster = Cluster(transport=transport, router_url=f"http://127.0.0.1:{router}",
                          baseline_url=f"http://127.0.0.1:{baseline}", prefill_vllm_url=f"http://127.0.0.1:{base}",
                          decode_vllm_url=f"http://127.0.0.1:{base + 2}", model_name=self.model_dir.name,
                          model_dir=self.model_dir, log_dir=log_dir, fault_file=fault_file, cluster_token=token)
        return _Running(cluster, deployed, stack, base)

    def stop(self) -> None:
        """Check the running cluster is drained, stop it, and check nothing is left behind."""
        if self.current is None:
            return
        running, self.current = self.current, None
        cluster, base = running.cluster, running.base
        try:
            exited = deploy_cluster.exited(running.deployed, running.deployed.components)
            drained = {c.name: "exited" for c in exited} or _drained(cluster)
        finally:
            running.stack.close()
        left = _processes_with(f"--port {base} ", f"--port {base + 2} ") + _processes_in(cluster.log_dir)
        if drained or left:
            raise ClusterError(f"{cluster.transport} cluster: still in use {drained}; processes left {left}")


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

def _processes_in(folder: Path) -> list[str]:
    """Command lines of live (non-zombie) processes running in `folder` (a cluster's components, and what
    they start, run in its run folder)."""
    found = []
    for cwd in Path("/proc").glob("[0-9]*/cwd"):
        try:
            if cwd.resolve() != folder.resolve():
                continue
            state = (cwd.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
            text = (cwd.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        if state != "Z":
            found.append(text[:200])
    return found
