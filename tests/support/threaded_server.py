"""Run an ASGI app with uvicorn on a free loopback port in a background thread (real sockets)."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

import uvicorn

from bench.local_cluster import free_ports


def free_port(with_next: bool = False) -> int:
    """A loopback TCP port free now, never handed out before in this process, below the kernel's ephemeral
    range (`bench.local_cluster.free_ports`); `with_next`: port + 1 too (a node's /info is its vLLM port + 1).

    Below the ephemeral range no outgoing connection can take the port between this choice and the server's
    bind (CI once found a node's info port taken at start-up); never handing a port out twice keeps one
    cluster file's ports distinct (CI once got prefill's port again for decode)."""
    return free_ports(2 if with_next else 1)


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
