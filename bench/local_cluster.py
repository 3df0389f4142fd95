"""A local cluster for `bench compare --local`: `disagg up --local`'s cluster (deploy/local.py), run in this
process.

Started with prefix caching off and a colocated baseline router, on free loopback ports, attached: its
processes die with this one. Ready when every component is healthy (deploy.cluster's health wait);
stopped when the block ends. Each component logs to LOG_DIR/NAME.log.
"""

from __future__ import annotations

import logging
import random
import socket
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from core.errors import ConfigError
from core.host import ephemeral_ports
from deploy import local
from deploy.cluster import ClusterFailed
from node.settings import EngineSettings

log = logging.getLogger(__name__)

_PORTS_FROM = 20000  # up to the kernel's ephemeral range (32768 by default): see free_ports
_handed_out: set[int] = set()
__all__ = ["ClusterFailed", "LocalCluster", "free_ports", "local_cluster", "options"]


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
    """The first of `count` consecutive ports that are all free to bind on `host` right now and were not
    handed out before by this process; ClusterFailed when none are found.

    They lie below the kernel's ephemeral port range (`/proc/sys/net/ipv4/ip_local_port_range`), so that no
    outgoing connection takes one while its server is down: a node restarted after a crash must bind its
    ports again (CI once saw a restarted prefill node fail to bind its KV port, 47512, held by then as the
    local end of some connection)."""
    rng = random.Random()
    low, high = _port_range()
    for _ in range(tries):
        first = rng.randrange(low, high - count)
        ports = range(first, first + count)
        if not _handed_out.intersection(ports) and all(_bindable(host, port) for port in ports):
            _handed_out.update(ports)
            return first
    raise ClusterFailed(f"no {count} consecutive free ports found on {host} in {low}-{high}")


def _port_range() -> tuple[int, int]:
    """[_PORTS_FROM, start of the ephemeral range); the whole range above _PORTS_FROM if that is too narrow."""
    ephemeral_low = ephemeral_ports()[0]
    return (_PORTS_FROM, ephemeral_low) if ephemeral_low - _PORTS_FROM >= 4096 else (_PORTS_FROM, 65535)


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def options(transport: str, model_dir: Path, max_model_len: int, log_dir: Path, ports: dict[str, int],
            ready_timeout_s: float = 600.0) -> local.LocalOptions:
    """`up --local`'s options for these ports (router, baseline, prefill, decode, kv), prefix caching off."""
    return local.LocalOptions.build(
        model=str(model_dir), transport=transport, port=ports["router"], baseline_port=ports["baseline"],
        prefill_port=ports["prefill"], decode_port=ports["decode"], kv_port_base=ports["kv"], run_dir=str(log_dir),
        ready_timeout_s=ready_timeout_s, engine=EngineSettings(max_model_len=max_model_len, prefix_caching=False))


@contextmanager
def local_cluster(transport: str, model_dir: Path, max_model_len: int, log_dir: Path,
                  ready_timeout_s: float = 600.0) -> Iterator[LocalCluster]:
    """Start a cluster for `transport`, yield its URLs once healthy, stop it on exit. ClusterFailed (its
    message holds the failing component's log tail) when it does not start."""
    vllm_base = free_ports(4)  # prefill vLLM + its /info, decode vLLM + its /info
    ports = {"router": free_ports(1), "baseline": free_ports(1), "prefill": vllm_base,
             "decode": vllm_base + 2, "kv": free_ports(2)}
    url = "http://127.0.0.1:{}".format
    cluster = LocalCluster(transport=transport, router_url=url(ports["router"]), baseline_url=url(ports["baseline"]),
                           prefill_vllm_url=url(ports["prefill"]), decode_vllm_url=url(ports["decode"]),
                           log_dir=log_dir)
    log.info("starting a local %s cluster (logs in %s)", transport, log_dir)
    with ExitStack() as stack:
        try:
            stack.enter_context(local.running(options(transport, model_dir, max_model_len, log_dir, ports,
                                                      ready_timeout_s)))
        except ConfigError as exc:  # pre-flight: e.g. a port taken since it was picked
            raise ClusterFailed(str(exc)) from None
        yield cluster
