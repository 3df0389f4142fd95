"""Two benchmark peers in two processes (spawned), driven by the parent over multiprocessing pipes.

A peer is a class named by "module:Class" and built in its own process; the parent calls its methods by
name (`prepare`, `pull`, `release`, ...) with keyword arguments and gets a dict back. Every message on the
pipes is JSON in `send_bytes` (no pickle); the bytes under test travel between the two peers over the
transport being measured, never through the parent.
"""

from __future__ import annotations

import importlib
import json
import logging
import multiprocessing
import os
import sys
from multiprocessing.connection import Connection
from typing import Any

logger = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 5.0
RELEASE_TIMEOUT_S = 10.0


class PeerError(RuntimeError):
    """A peer could not start, answered with an error, died or did not answer in time."""


class PeerGoneError(PeerError):
    """A peer died or did not answer in time: the pair cannot be used any more."""


class PeerUnavailableError(PeerError):
    """A peer could not start because what it needs is missing here (e.g. NIXL is not installed)."""


def send_json(conn: Connection, message: dict[str, Any]) -> None:
    conn.send_bytes(json.dumps(message).encode())


def recv_json(conn: Connection) -> dict[str, Any]:
    return json.loads(conn.recv_bytes().decode())


def peer_main(conn: Connection, peer_class: str, env: dict[str, str]) -> None:
    """The child process: apply `env`, build the peer, then answer the parent's calls until "stop"."""
    os.environ.update(env)  # before the peer loads native libraries that read it (UCX_TLS)
    os.dup2(2, 1)  # anything a library prints goes to stderr: the parent's stdout may carry JSON
    logging.basicConfig(level=logging.WARNING)
    try:
        module_name, class_name = peer_class.split(":")
        peer = getattr(importlib.import_module(module_name), class_name)()
    except ImportError as exc:
        send_json(conn, {"unavailable": f"cannot import: {exc}"})
        return
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which decides
        send_json(conn, {"unavailable": f"{type(exc).__name__}: {exc}"})
        return
    send_json(conn, {"ready": True})
    _serve(conn, peer)
    close = getattr(peer, "close", None)
    if close is not None:
        close()
    try:
        send_json(conn, {"stopped": True})
    except OSError:
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown: native libraries' exit handlers (UCX threads) can hang it


def _serve(conn: Connection, peer: object) -> None:
    """Answer calls until "stop" (or the parent is gone)."""
    while True:
        try:
            call = recv_json(conn)
        except (EOFError, OSError):
            return
        method = call.pop("call")
        if method == "stop":
            return
        try:
            reply = getattr(peer, method)(**call)
        except Exception as exc:  # noqa: BLE001 - a failed step is a result, not a crash
            logger.debug("peer %s failed", method, exc_info=True)
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        send_json(conn, reply)


class PeerProcess:
    """One spawned peer process and the parent's end of its pipe."""

    def __init__(self, peer_class: str, env: dict[str, str] | None = None) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self.name = peer_class
        self._process = context.Process(target=peer_main, args=(child_conn, peer_class, dict(env or {})),
                                        name=f"disagg-bench-{peer_class.split(':')[1]}", daemon=True)
        self._process.start()
        child_conn.close()

    def wait_ready(self, timeout_s: float) -> None:
        reply = self._receive(timeout_s, "start")
        if "unavailable" in reply:
            raise PeerUnavailableError(reply["unavailable"])

    def call(self, method: str, timeout_s: float, **kwargs: Any) -> dict[str, Any]:
        """Call `method` on the peer; raise PeerError if it fails, dies or takes over `timeout_s`."""
        try:
            send_json(self._conn, {"call": method, **kwargs})
        except OSError as exc:
            raise PeerError(f"{self.name} is gone: {exc}") from None
        reply = self._receive(timeout_s, method)
        if "error" in reply:
            raise PeerError(reply["error"])
        return reply

    def _receive(self, timeout_s: float, what: str) -> dict[str, Any]:
        try:
            if not self._conn.poll(max(timeout_s, 0.0)):
                raise PeerGoneError(f"{self.name}: no answer to {what} within {timeout_s:.0f} s")
            return recv_json(self._conn)
        except (EOFError, OSError):
            self._process.join(timeout=1.0)
            raise PeerGoneError(f"{self.name} exited (code {self._process.exitcode}) during {what}") from None

    def close(self) -> None:
        """Ask the peer to stop; kill it if it does not."""
        if self._process.is_alive():
            try:
                send_json(self._conn, {"call": "stop"})
                self._conn.poll(JOIN_TIMEOUT_S)
            except OSError:
                pass
            self._process.join(timeout=JOIN_TIMEOUT_S)
        if self._process.is_alive():
            logger.warning("%s did not stop; killing it", self.name)
            self._process.kill()
            self._process.join(timeout=JOIN_TIMEOUT_S)
        self._conn.close()


class PeerPair:
    """A source peer (holds the bytes) and a sink peer (pulls them), each in its own process."""

    def __init__(self, source_class: str, sink_class: str, env: dict[str, str] | None = None) -> None:
        self.source = PeerProcess(source_class, env)
        self.sink = PeerProcess(sink_class, env)

    def wait_ready(self, timeout_s: float) -> None:
        self.source.wait_ready(timeout_s)
        self.sink.wait_ready(timeout_s)

    def transfer(self, size_bytes: int, repeats: int, timeout_s: float) -> dict[str, Any]:
        """Publish `size_bytes` on the source, pull them `repeats` + 1 times (one warm-up), release.

        Returns the sink's reply: `seconds` (one per timed pull) and `verified`.
        """
        endpoint = self.source.call("prepare", timeout_s, size_bytes=size_bytes, transfers=repeats + 1)
        try:
            return self.sink.call("pull", timeout_s, endpoint=endpoint, size_bytes=size_bytes, repeats=repeats)
        finally:
            try:
                self.source.call("release", min(timeout_s, RELEASE_TIMEOUT_S))
            except PeerError as exc:
                logger.warning("releasing %s MiB on %s failed: %s", size_bytes >> 20, self.source.name, exc)

    def close(self) -> None:
        self.sink.close()
        self.source.close()
