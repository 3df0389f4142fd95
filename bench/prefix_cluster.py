"""A local cluster with several prefill nodes that publish KV events, for prefix-aware routing: what
`disagg bench multiturn --local` and tests/integration/test_prefix_routing.py run.

`up --local` starts one prefill node; prefix-aware routing needs at least two to choose between, so this
builds the one-host cluster spec itself (deploy.cluster_file's `[[prefill]]` arrays) and runs it attached
through deploy.cluster, the launcher every cluster uses. Nodes: `prefill-1..N` and `decode`, each vLLM
server bound to its own core where the box has them (`cores`, default for 2 prefill nodes on a 2-core box:
0 and 1, decode on 0; on that box a decode node sharing prefill-1's core saw its tcp pulls from prefill-1
stall until the lease expired, so answers of one token, served by the prefill node alone, measure routing
without it; the integration test puts decode beside prefill-2 instead, where pulls took ms), with
prefix caching, KV events and the tcp transport; the router routes prefill nodes with `policy`, the
baseline router serves colocated on the decode node. Ports are free loopback ports; a cluster token in a
mode-600 file in the log folder. `extra_router(...)` starts one more router process on the same nodes
(another policy, or a restarted router).
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx

from core.host import terminate
from bench.local_cluster import free_ports
from bench.multiturn_run import NodeRef
from deploy import cluster_file
from deploy.cluster import Cluster, ClusterFailed, stop, up
from node.settings import EngineSettings

log = logging.getLogger(__name__)
HOST = "localhost"


@dataclass(frozen=True)
class PrefixCluster:
    router_url: str
    baseline_url: str
    nodes: tuple[NodeRef, ...]  # prefill-1..N, decode (vLLM URLs)
    token_file: Path
    log_dir: Path
    model_dir: Path

    def info_url(self, node: NodeRef) -> str:
        host, port = node.vllm_url.rsplit(":", 1)
        return f"{host}:{int(port) + 1}"

    def token(self) -> str:
        return self.token_file.read_text().strip()

    @property
    def prefill_nodes(self) -> tuple[NodeRef, ...]:
        return tuple(n for n in self.nodes if n.role == "prefill")


def default_cores(prefill_nodes: int, num_cores: int) -> tuple[str, ...]:
    """One core per vLLM server, round robin over the box's cores (prefill nodes first, then decode)."""
    return tuple(str(i % num_cores) for i in range(prefill_nodes)) + (str(prefill_nodes % num_cores),)


def spec(model_dir: Path, log_dir: Path, token_file: Path, engine: EngineSettings, prefill_nodes: int = 2,
         cores: tuple[str, ...] | None = None, policy: str = "prefix_aware",
         transport: str = "tcp") -> cluster_file.ClusterSpec:
    """The one-host cluster spec (ports chosen free now); ConfigError names what is wrong."""
    cores = cores or default_cores(prefill_nodes, os.cpu_count() or 1)
    base, kv = free_ports(2 * (prefill_nodes + 1)), free_ports(prefill_nodes + 1)
    nodes = [{"host": HOST, "port": base + 2 * i, "info_port": base + 2 * i + 1, "kv_port": kv + i,
              "cpu_cores": cores[i]} for i in range(prefill_nodes + 1)]
    data = {"name": "prefix", "model": str(model_dir), "transport": transport, "run_dir": str(log_dir),
            "token_file": str(token_file), "ready_timeout_s": 900.0,
            "hosts": {HOST: {"address": "127.0.0.1", "local": True}},
            "prefill": nodes[:prefill_nodes], "decode": nodes[prefill_nodes], "engine": engine,
            "router": {"port": free_ports(1), "baseline_port": free_ports(1), "prefill_policy": policy}}
    return cluster_file.validate(data, "prefix cluster: ")


@contextmanager
def running(model_dir: Path, log_dir: Path, engine: EngineSettings | None = None, prefill_nodes: int = 2,
            cores: tuple[str, ...] | None = None, policy: str = "prefix_aware",
            transport: str = "tcp") -> Iterator[PrefixCluster]:
    """Start the cluster, yield it once every component is healthy, stop it (ClusterFailed if it fails)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    token_file = log_dir / "cluster-token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, (secrets.token_hex(16) + "\n").encode())
    os.close(fd)
    engine = engine or EngineSettings(kv_events=True)
    the_spec = spec(model_dir, log_dir, token_file, engine, prefill_nodes, cores, policy, transport)
    cluster = Cluster.of(the_spec, attached=True)
    up(cluster)
    url = "http://127.0.0.1:{}".format
    nodes = tuple(NodeRef(name, role, url(node.port)) for name, role, node in the_spec.nodes())
    try:
        yield PrefixCluster(url(the_spec.router.port), url(the_spec.router.baseline_port), nodes, token_file,
                            log_dir, model_dir)
    finally:
        for problem in stop(cluster, cluster.components):
            log.error("%s", problem)


@contextmanager
def extra_router(cluster: PrefixCluster, *args: str, name: str = "router-extra",
                 ready_timeout_s: float = 60.0) -> Iterator[str]:
    """Another router process on the cluster's nodes (`args`: e.g. --prefill-policy round_robin); its URL."""
    port = free_ports(1)
    argv = [sys.executable, "-m", "disagg", "router", "--port", str(port),
            "--cluster-token-file", str(cluster.token_file), *args]
    for node in cluster.nodes:
        argv += [f"--{node.role}", cluster.info_url(node)]
    log_file = open(cluster.log_dir / f"{name}-{port}.log", "wb")
    proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT)
    router_url = f"http://127.0.0.1:{port}"
    try:
        deadline_s = time.monotonic() + ready_timeout_s
        while not _healthy(router_url):
            if proc.poll() is not None or time.monotonic() > deadline_s:
                raise ClusterFailed(f"{name} did not become healthy (see {log_file.name})")
            time.sleep(0.5)
        yield router_url
    finally:
        terminate(proc, 30)
        log_file.close()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
