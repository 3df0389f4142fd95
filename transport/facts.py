"""What `--transport auto` and `disagg doctor` know about a KV link: is the peer this host, which RDMA devices
are here. Gathered without importing any transport library (`transport.registry` asks the transports)."""

from __future__ import annotations

import ipaddress
import socket

from core.host import RDMA_SYSFS, has_cuda, rdma_devices  # noqa: F401  (host facts, re-exported)
from transport.base import LinkFacts

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


def link_facts(peer_host: str) -> LinkFacts:
    """This host's facts for a KV link to `peer_host`."""
    return LinkFacts(peer_host=peer_host, peer_is_local=is_local_address(peer_host),
                     rdma_devices=tuple(rdma_devices()), cuda=has_cuda())
