"""A real local cluster with a KV tier for the tier tests: two prefill nodes (both on core 0, so that a turn
can land on a node that has not seen the conversation), a decode node (core 1, also the colocated baseline),
the router (round robin over the prefill nodes) and the baseline router, and the tier: a Redis server that
the launcher starts (`[kv_tier]` without url: `disagg kv-tier`, capped at `max_bytes`) or a directory.

Its own cluster because the session's clusters (cluster_manager.py) have one prefill node and prefix caching
off, and the tier needs two prefill nodes and prefix caching on; it is built as a cluster spec and run through
deploy.cluster like `up --local` (whose plan has one prefill node). Every node requires a cluster token (in a
mode-600 file in the log folder), which is also the Redis server's password.
"""

from __future__ import annotations

import os
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx

from bench.quality import Nodes
from deploy import cluster as deploy_cluster
from deploy import cluster_file
from node.settings import EngineSettings
from tests.integration import vllm_metrics
from tests.integration.cluster_manager import _drained, _processes_in
from tests.support.threaded_server import free_port

STARTUP_TIMEOUT_S = 900.0
ENGINE = EngineSettings(prefix_caching=True, kv_lease_s=20, kv_transfer_timeout_s=8, max_model_len=2048)
EXTERNAL = "vllm:prompt_tokens_by_source_total[external_kv_transfer]"
LOCAL_HIT = "vllm:prompt_tokens_by_source_total[local_cache_hit]"
HIT_BLOCKS = "vllm:disagg_kv_tier_hit_blocks_total"


@dataclass(frozen=True)
class TierCluster:
    transport: str
    backend: str
    router_url: str
    baseline_url: str
    prefill_urls: tuple[str, ...]
    decode_url: str
    model_name: str
    model_dir: Path
    log_dir: Path
    tier_health_url: str | None = None  # redis: the kv-tier component's /health and /metrics
    redis_url: str | None = None
    tier_path: Path | None = None  # disk
    token: str = field(default="", repr=False)

    def nodes(self, prefill: int) -> Nodes:
        """The P/D pair through prefill node `prefill` (0 or 1), for driving vLLM's protocol directly."""
        return Nodes(self.prefill_urls[prefill], self.decode_url, self.model_name, self.token)

    def metrics(self, prefill: int) -> dict[str, float]:
        return vllm_metrics.read(self.prefill_urls[prefill])

    def redis(self):
        """A redis-py client of the tier's server (the cluster token is its password)."""
        from transport.kv_tier.redis_backend import client

        assert self.redis_url is not None
        return client(self.redis_url, timeout_s=5.0, password=self.token)

    def tier_health(self) -> dict:
        assert self.tier_health_url is not None
        return httpx.get(f"{self.tier_health_url}/health", timeout=5).json()

    def wait_tier_entries(self, at_least: int, timeout_s: float = 30.0) -> int:
        """Wait until the tier holds `at_least` entries (stores are written in the background)."""
        deadline_s = time.monotonic() + timeout_s
        while True:
            count = self.entries()
            if count >= at_least or time.monotonic() > deadline_s:
                return count
            time.sleep(0.2)

    def entries(self) -> int:
        if self.backend == "redis":
            return int(self.redis().dbsize())
        assert self.tier_path is not None
        return sum(1 for _ in self.tier_path.rglob("*.kvb"))


@contextmanager
def tier_cluster(model_dir: Path, log_dir: Path, transport: str, backend: str, max_bytes: int) -> Iterator[TierCluster]:
    """Start the cluster, yield it once healthy; stop it, checking that nothing is in use or left running."""
    log_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    token_file = log_dir / "cluster-token"
    token_file.write_text(token + "\n")
    os.chmod(token_file, 0o600)
    prefill_ports = [free_port(with_next=True) for _ in range(2)]  # a node's /info: its vLLM port + 1
    decode_port, router_port, baseline_port = free_port(with_next=True), free_port(), free_port()
    tier: dict = {"backend": backend, "max_bytes": max_bytes, "ttl_s": 3600}
    if backend == "redis":
        tier.update(port=free_port(), health_port=free_port())
    else:
        tier["path"] = str(log_dir / "kv-tier")
    node = {"host": "localhost"}  # a node's /info is on its vLLM port + 1, as `up --local` has it
    data = {
        "name": f"tier-{transport}-{backend}", "model": str(model_dir), "transport": transport,
        "run_dir": str(log_dir), "ready_timeout_s": STARTUP_TIMEOUT_S, "token_file": str(token_file),
        "hosts": {"localhost": {"address": "127.0.0.1", "local": True}},
        "prefill": [{**node, "port": port, "info_port": port + 1, "kv_port": free_port(), "cpu_cores": "0"}
                    for port in prefill_ports],
        "decode": {**node, "port": decode_port, "info_port": decode_port + 1, "kv_port": free_port(),
                   "cpu_cores": "1"},
        "router": {"host": "local", "port": router_port, "baseline_port": baseline_port},
        "engine": ENGINE, "kv_tier": tier}
    spec = cluster_file.validate(data, "tier test cluster: ")
    deployed = deploy_cluster.Cluster.of(spec, attached=True)
    deploy_cluster.up(deployed)
    url = "http://127.0.0.1:{}".format
    cluster = TierCluster(
        transport=transport, backend=backend, router_url=url(router_port), baseline_url=url(baseline_port),
        prefill_urls=tuple(url(port) for port in prefill_ports), decode_url=url(decode_port),
        model_name=model_dir.name, model_dir=model_dir, log_dir=log_dir, token=token,
        tier_health_url=url(tier["health_port"]) if backend == "redis" else None,
        redis_url=f"redis://127.0.0.1:{tier['port']}/0" if backend == "redis" else None,
        tier_path=log_dir / "kv-tier" if backend == "disk" else None)
    try:
        yield cluster
    finally:
        busy = _drained_all(cluster)
        problems = deploy_cluster.stop(deployed, deployed.components)
        left = _processes_in(log_dir)
        assert not (busy or problems or left), f"in use {busy}; stop problems {problems}; processes left {left}"


def _drained_all(cluster: TierCluster) -> dict:
    busy = {}
    for i, url in enumerate(cluster.prefill_urls):
        state = _drained(_OneNode(url, cluster.decode_url))
        busy.update({f"prefill-{i + 1}/{name}": value for name, value in state.items()})
    return busy


@dataclass(frozen=True)
class _OneNode:
    """What cluster_manager._drained reads: a prefill and a decode vLLM URL."""

    prefill_vllm_url: str
    decode_vllm_url: str
