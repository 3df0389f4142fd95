"""Run an ASGI app with uvicorn on a free loopback port in a background thread (real sockets)."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import uvicorn


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback TCP port free now and never handed out before in this process.

    The kernel may give the same ephemeral port to two successive binds once the first socket is closed; tests
    that take several ports for one cluster file (CI once got prefill's port again for decode) need them distinct.
    """
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no fresh free port after 100 tries")


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
