"""A real `redis-server` for tests: on a free loopback port, no persistence, a memory cap with allkeys-lru
(the command line `disagg kv-tier` runs, deploy/kv_tier_server.py), stopped afterwards.

Without redis-server or redis-py installed, tests using it skip, unless DISAGG_REQUIRE_ENGINE=1 (CI, which
installs both through deploy/install.sh) makes that a failure.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import pytest

from core.host import terminate
from deploy.kv_tier_server import KvTierServerSettings, redis_argv
from tests.support.threaded_server import free_port

START_TIMEOUT_S = 10.0


@dataclass
class RedisServer:
    url: str
    port: int
    process: subprocess.Popen[bytes]

    def pause(self) -> None:
        """SIGSTOP: the server accepts connections but answers nothing (a hung tier)."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)


def require_redis() -> None:
    """Skip (or fail under DISAGG_REQUIRE_ENGINE=1) where redis-server or redis-py is missing."""
    missing = [name for name, ok in (("redis-server", shutil.which("redis-server") is not None),
                                     ("redis-py", importlib.util.find_spec("redis") is not None)) if not ok]
    if missing:
        message = f"{' and '.join(missing)} not installed (deploy/install.sh installs them)"
        if os.environ.get("DISAGG_REQUIRE_ENGINE") == "1":
            pytest.fail(message)
        pytest.skip(message)


@contextmanager
def redis_server(max_bytes: int = 64 * 2**20, extra_args: tuple[str, ...] = (),
                 password: str | None = None) -> Iterator[RedisServer]:
    """A running redis-server (requiring `password` if given); stopped (SIGKILL if it does not stop) when the
    block ends."""
    require_redis()
    port = free_port()
    settings = KvTierServerSettings(port=port, health_port=free_port(), max_bytes=max_bytes)
    argv = [*redis_argv(settings, password_on_stdin=False), "--loglevel", "warning", *extra_args]
    if password:
        argv += ["--requirepass", password]  # a test's throwaway password; the launcher's goes on stdin
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    server = RedisServer(f"redis://127.0.0.1:{port}/0", port, proc)
    try:
        _wait_ready(server, password)
        yield server
    finally:
        server.resume()
        terminate(proc, 10)


def _wait_ready(server: RedisServer, password: str | None) -> None:
    from transport.kv_tier.backend import TierError
    from transport.kv_tier.redis_backend import server_facts

    deadline_s = time.monotonic() + START_TIMEOUT_S
    while True:
        assert server.process.poll() is None, f"redis-server exited with {server.process.returncode}"
        try:
            server_facts(server.url, timeout_s=0.5, password=password)
            return
        except TierError:
            if time.monotonic() > deadline_s:
                raise
            time.sleep(0.05)
