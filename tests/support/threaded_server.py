"""Run an ASGI app with uvicorn on a free loopback port in a background thread (real sockets)."""

from __future__ import annotations

import random
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import uvicorn


_handed_out: set[int] = set()
_rng = random.Random()  # its own: a test that seeds `random` must not replay our choices
_PORTS_BELOW_EPHEMERAL = (20000, 32767)  # Linux's ephemeral range starts at 32768 by default


def free_port(with_next: bool = False) -> int:
    """A loopback TCP port free now, never handed out before in this process, and (where the kernel's
    ephemeral range allows) below that range; `with_next`: port + 1 too (a node's /info is its vLLM port + 1).

    Below the ephemeral range no outgoing connection (the router's, a test client's, vLLM's own sockets) can
    take the port between this choice and the server's bind: CI once found a node's info port taken by one
    at start-up. Never handing a port out twice keeps one cluster file's ports distinct.
    """
    low, high = _free_range()
    for _ in range(500):
        port = _rng.randint(low, high - 1)
        wanted = (port, port + 1) if with_next else (port,)
        if not _handed_out.intersection(wanted) and all(_bindable(p) for p in wanted):
            _handed_out.update(wanted)
            return port
    raise RuntimeError(f"no free port in {low}-{high} after 500 tries")


def _free_range() -> tuple[int, int]:
    try:
        ephemeral_low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    if ephemeral_low > _PORTS_BELOW_EPHEMERAL[0] + 1000:
        return _PORTS_BELOW_EPHEMERAL[0], min(_PORTS_BELOW_EPHEMERAL[1], ephemeral_low - 1)
    return ephemeral_low, 65535  # an unusual kernel setting: take our chances in its range


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextmanager
def serve(app: object, timeout_s: float = 10.0) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline_s = time.monotonic() + timeout_s
    while not server.started:
        if time.monotonic() > deadline_s or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
