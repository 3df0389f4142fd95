"""A local cluster for `bench compare --local`: `python -m disagg up --local` run as a child process.

Started with prefix caching off and a colocated baseline router, on free loopback ports; ready when
the router and the baseline answer `GET /health`; stopped with SIGTERM (it stops its own children),
SIGKILL to its process group after a grace period. It also gets SIGTERM if this process dies.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx

from core.host import die_with_parent

log = logging.getLogger(__name__)

STOP_GRACE_S = 90.0
_PORT_RANGE = (20000, 60000)


class ClusterStartError(RuntimeError):
    """The local cluster exited or did not become healthy in time; the message holds its log tail."""


@dataclass(frozen=True)
class LocalCluster:
    """URLs of one running local cluster."""

    transport: str
    router_url: str
    baseline_url: str
    prefill_vllm_url: str
    decode_vllm_url: str
    log_dir: Path


def free_ports(count: int, host: str = "127.0.0.1", tries: int = 200) -> int:
    """The first of `count` consecutive ports that are all free to bind on `host` right now."""
    rng = random.Random()
    for _ in range(tries):
        first = rng.randrange(_PORT_RANGE[0], _PORT_RANGE[1] - count)
        if all(_bindable(host, port) for port in range(first, first + count)):
            return first
    raise ClusterStartError(f"no {count} consecutive free ports found on {host}")


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def up_command(transport: str, model_dir: Path, max_model_len: int, log_dir: Path,
               ports: dict[str, int]) -> list[str]:
    """The `disagg up --local` command line for these ports (router, baseline, prefill, decode, kv)."""
    return [sys.executable, "-m", "disagg", "up", "--local", "--model", str(model_dir),
            "--transport", transport, "--port", str(ports["router"]), "--baseline-port", str(ports["baseline"]),
            "--prefill-port", str(ports["prefill"]), "--decode-port", str(ports["decode"]),
            "--kv-port-base", str(ports["kv"]), "--max-model-len", str(max_model_len),
            "--no-prefix-caching", "--log-dir", str(log_dir)]


@contextmanager
def local_cluster(transport: str, model_dir: Path, max_model_len: int, log_dir: Path,
                  ready_timeout_s: float = 600.0) -> Iterator[LocalCluster]:
    """Start a cluster for `transport`, yield its URLs once healthy, stop it on exit."""
    vllm_base = free_ports(4)  # prefill vLLM + its /info, decode vLLM + its /info
    ports = {"router": free_ports(1), "baseline": free_ports(1), "prefill": vllm_base,
             "decode": vllm_base + 2, "kv": free_ports(2)}
    log_dir.mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster(transport=transport, router_url=f"http://127.0.0.1:{ports['router']}",
                           baseline_url=f"http://127.0.0.1:{ports['baseline']}",
                           prefill_vllm_url=f"http://127.0.0.1:{ports['prefill']}",
                           decode_vllm_url=f"http://127.0.0.1:{ports['decode']}", log_dir=log_dir)
    argv = up_command(transport, model_dir, max_model_len, log_dir, ports)
    log.info("starting a local %s cluster (logs in %s): %s", transport, log_dir, " ".join(argv))
    with open(log_dir / "up.log", "ab") as up_log:
        process = subprocess.Popen(argv, stdout=up_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, preexec_fn=die_with_parent)
    try:
        _wait_ready(process, cluster, ready_timeout_s)
        yield cluster
    finally:
        stop(process)


def _wait_ready(process: subprocess.Popen[bytes], cluster: LocalCluster, timeout_s: float) -> None:
    started_s = time.monotonic()
    next_note_s = started_s + 30.0
    while True:
        if process.poll() is not None:
            raise ClusterStartError(f"disagg up exited with {process.returncode}:\n{_tail(cluster.log_dir)}")
        if all(_healthy(url) for url in (cluster.router_url, cluster.baseline_url)):
            log.info("%s cluster ready in %.0f s", cluster.transport, time.monotonic() - started_s)
            return
        now_s = time.monotonic()
        if now_s - started_s > timeout_s:
            raise ClusterStartError(f"cluster not healthy after {timeout_s:.0f} s:\n{_tail(cluster.log_dir)}")
        if now_s >= next_note_s:
            log.info("waiting for the %s cluster (%.0f s so far)", cluster.transport, now_s - started_s)
            next_note_s += 30.0
        time.sleep(1.0)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _tail(log_dir: Path, num_chars: int = 3000) -> str:
    try:
        return (log_dir / "up.log").read_text(errors="replace")[-num_chars:]
    except OSError:
        return ""


def stop(process: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM `disagg up` and wait for it to stop its components; SIGKILL its group if it hangs."""
    if process.poll() is None:
        log.info("stopping the local cluster (pid %d)", process.pid)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            log.warning("disagg up did not stop in %.0f s; killing its process group", grace_s)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
