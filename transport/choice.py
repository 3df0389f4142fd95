"""`--transport auto`: NIXL where it has a fast path to the peer, else our TCP connector.

NIXL is fast over RDMA (RoCE / InfiniBand devices under /sys/class/infiniband) and over shared memory
(both nodes on one host). Elsewhere UCX falls back to its TCP transport, which is slower than our own
connector, so `auto` picks `tcp`. The decision and its reason are logged once and shown in /info.
"""

from __future__ import annotations

import importlib
import ipaddress
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
RDMA_SYSFS = Path("/sys/class/infiniband")


@dataclass(frozen=True)
class TransportChoice:
    name: str  # "nixl" | "tcp"
    reason: str


def nixl_available() -> bool:
    """True when NIXL imports here (the one place this module touches it)."""
    try:
        importlib.import_module("nixl")
    except ImportError:
        return False
    return True


def rdma_devices(sysfs: Path = RDMA_SYSFS) -> list[str]:
    try:
        return sorted(p.name for p in sysfs.iterdir())
    except OSError:
        return []


def is_local_address(host: str) -> bool:
    """True when `host` is this machine (loopback, or one of its own addresses)."""
    try:
        addr = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, ValueError):
        return False
    if addr.is_loopback:
        return True
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((str(addr), 0))  # only succeeds for an address of ours
        return True
    except OSError:
        return False


def choose(requested: str, peer_host: str, *, has_nixl: bool | None = None,
           devices: list[str] | None = None) -> TransportChoice:
    """Resolve `requested` ("nixl", "tcp", "none" or "auto") for a link to `peer_host`."""
    if requested != "auto":
        return TransportChoice(requested, f"--transport {requested}")
    has_nixl = nixl_available() if has_nixl is None else has_nixl
    devices = rdma_devices() if devices is None else devices
    if not has_nixl:
        return TransportChoice("tcp", "auto: NIXL is not installed here")
    if is_local_address(peer_host):
        return TransportChoice("nixl", f"auto: peer {peer_host} is on this host (UCX shared memory)")
    if devices:
        return TransportChoice("nixl", f"auto: RDMA devices {', '.join(devices)} (UCX RDMA)")
    return TransportChoice("tcp", "auto: no RDMA device and the peer is remote (UCX would fall back to TCP)")
