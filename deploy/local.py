"""`disagg up --local`: a prefill node, a decode node and the router as processes on this host.

The launcher plans the processes (`plan`), checks that their ports are free, starts them, shows
progress until every one is healthy, prints the endpoint, and stops everything on Ctrl-C, on SIGTERM,
or as soon as any one process dies, leaving no process behind.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from deploy.processes import ManagedProcess, stop_all
from core.cluster_token import CLUSTER_TOKEN_ENV
from core.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class LocalClusterConfig:
    model_dir: Path
    mode: str = "disagg"  # "disagg" | "colocated"
    transport: str = "nixl"
    router_port: int = 8000
    baseline_port: int | None = None  # also run a colocated router on this port (disagg mode)
    prefill_port: int = 8100
    decode_port: int = 8200
    kv_port_base: int = 5601
    max_model_len: int = 2048
    prefix_caching: bool = True
    log_dir: Path = Path.home() / ".cache" / "disagg" / "logs" / "local"
    ready_timeout_s: float = 600.0
    node_env: tuple[str, ...] = ()  # KEY=VALUE for both vLLM servers
    kv_lease_s: float = 30.0
    kv_transfer_timeout_s: float = 30.0
    restart_on_crash: int = 0  # times each node restarts a vLLM server that dies
    cluster_token: str | None = field(default=None, repr=False)  # to nodes and routers via their environment

    def __post_init__(self) -> None:
        if self.mode not in ("disagg", "colocated"):
            raise ConfigError(f"--mode must be disagg or colocated, not {self.mode!r}")
        if self.ready_timeout_s <= 0:
            raise ConfigError("ready timeout must be > 0")

    @property
    def router_url(self) -> str:
        return f"http://127.0.0.1:{self.router_port}"


def plan(config: LocalClusterConfig) -> list[ManagedProcess]:
    """The processes to start, in start order."""
    procs = []
    decode_info = f"http://127.0.0.1:{config.decode_port + 1}"
    prefill_info = f"http://127.0.0.1:{config.prefill_port + 1}"
    if config.mode == "disagg":
        procs.append(_node(config, "prefill", config.prefill_port, config.kv_port_base))
    procs.append(_node(config, "decode", config.decode_port, config.kv_port_base + 1))
    router = ["router", "--mode", config.mode, "--decode", decode_info, "--port", str(config.router_port)]
    if config.mode == "disagg":
        router += ["--prefill", prefill_info]
    procs.append(_component(config, "router", router, f"{config.router_url}/health"))
    if config.baseline_port is not None and config.mode == "disagg":
        baseline = ["router", "--mode", "colocated", "--decode", decode_info, "--port", str(config.baseline_port)]
        procs.append(_component(config, "baseline", baseline, f"http://127.0.0.1:{config.baseline_port}/health"))
    return procs


def _node(config: LocalClusterConfig, role: str, port: int, kv_port: int) -> ManagedProcess:
    args = [role, "--model", str(config.model_dir), "--port", str(port), "--info-port", str(port + 1),
            "--kv-port", str(kv_port), "--transport", config.transport if config.mode == "disagg" else "none",
            "--max-model-len", str(config.max_model_len), "--kv-lease-s", str(config.kv_lease_s),
            "--kv-transfer-timeout-s", str(config.kv_transfer_timeout_s),
            "--restart-on-crash", str(config.restart_on_crash)]
    if not config.prefix_caching:
        args.append("--no-prefix-caching")
    for pair in config.node_env:
        args += ["--env", pair]
    return _component(config, role, args, f"http://127.0.0.1:{port + 1}/health")


def _component(config: LocalClusterConfig, name: str, args: list[str], health_url: str) -> ManagedProcess:
    argv = [sys.executable, "-m", "disagg", *args]
    env = {CLUSTER_TOKEN_ENV: config.cluster_token} if config.cluster_token else {}
    return ManagedProcess(name=name, argv=argv, health_url=health_url, log_path=config.log_dir / f"{name}.log",
                          env=env)


def ports_in_use(config: LocalClusterConfig) -> list[int]:
    ports = [config.router_port, config.decode_port, config.decode_port + 1]
    if config.mode == "disagg":
        ports += [config.prefill_port, config.prefill_port + 1, config.kv_port_base, config.kv_port_base + 1]
        ports += [config.baseline_port] if config.baseline_port else []
    busy = []
    for port in ports:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                busy.append(port)
    return busy


class ClusterFailed(Exception):
    """A component died or did not become healthy in time."""


def wait_healthy(procs: list[ManagedProcess], timeout_s: float, report: "object") -> None:
    """Poll every component's health URL until all answer 200; fail fast when one exits."""
    started_s = time.monotonic()
    ready: set[str] = set()
    with httpx.Client(timeout=2.0) as client:
        while len(ready) < len(procs):
            for proc in procs:
                code = proc.exit_code()
                if code is not None:
                    raise ClusterFailed(f"{proc.name} exited with code {code} while starting; "
                                        f"last lines of {proc.log_path}:\n{proc.log_tail()}")
                if proc.name not in ready and _healthy(client, proc.health_url):
                    ready.add(proc.name)
            elapsed_s = time.monotonic() - started_s
            report(procs, ready, elapsed_s)
            if elapsed_s > timeout_s:
                raise ClusterFailed(f"not healthy after {timeout_s:.0f} s: "
                                    f"{', '.join(p.name for p in procs if p.name not in ready)}")
            if len(ready) < len(procs):
                time.sleep(1.0)


def _healthy(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def supervise(procs: list[ManagedProcess]) -> int:
    """Block until Ctrl-C/SIGTERM (exit 0) or until any process dies (exit 1)."""
    while True:
        for proc in procs:
            code = proc.exit_code()
            if code is not None:
                log.error("%s exited with code %s; stopping the cluster. Last lines of %s:\n%s",
                          proc.name, code, proc.log_path, proc.log_tail())
                return 1
        time.sleep(0.5)


def ignore_stop_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def raise_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so that one code path stops the cluster."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
