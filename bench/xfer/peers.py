"""Benchmark peers over TCP: our connector's block server and pull client, and a plain blocking socket.

Each source holds a KV-shaped pattern buffer (`bench.xfer.buffers`) and serves it; each sink pulls
it `repeats` + 1 times into its own preallocated buffer (the first pull is a warm-up, not timed), then
checks the bytes. A sink times each pull from its request to the last byte landing in its buffer; for our
connector that is `PullResult.seconds`, from opening the connection to the last frame's CRC-32C checked
(the RELEASE exchange after it is not counted). `memcpy_step` is the one-process reference.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Any

import numpy as np

from transport.tcp.blocks import RegionBlockStore
from transport.tcp.client import pull_blocks
from transport.tcp.lease import LeaseTable
from transport.tcp.server import BlockServer
from transport.tcp.wire import PullRequest
from bench.xfer.buffers import empty_buffer, holds_pattern, layer_arrays, layout_for, pattern_buffer

HOST = "127.0.0.1"
LEASE_S = 600.0
TRANSFER_TIMEOUT_S = 120.0
_REQUEST = struct.Struct("!Q")  # plain socket: the sink asks for this many bytes


class TcpConnectorSource:
    """Publishes the buffer, as KV blocks, on a `transport.tcp.server.BlockServer`."""

    def __init__(self) -> None:
        self._server: BlockServer | None = None
        self._buffer: np.ndarray | None = None

    def prepare(self, size_bytes: int, transfers: int) -> dict[str, Any]:
        layout = layout_for(size_bytes)
        self._buffer = self._make_buffer(size_bytes)
        store = self._make_store(layer_arrays(self._buffer, layout))
        leases = LeaseTable()
        for index in range(transfers):
            leases.publish(f"bench-{index}", range(layout.num_blocks), LEASE_S)
        self._server = BlockServer(store, leases, HOST, 0, transfer_timeout_s=TRANSFER_TIMEOUT_S)
        port = self._server.start()
        return {"host": HOST, "port": port, "layout_id": store.layout_id, "block_nbytes": store.block_nbytes,
                "num_blocks": layout.num_blocks}

    def release(self) -> dict[str, Any]:
        if self._server is not None:
            self._server.stop()
        self._server, self._buffer = None, None
        return {}

    def close(self) -> None:
        self.release()

    def _make_buffer(self, size_bytes: int) -> np.ndarray:
        """The bytes served (a subclass may serve other contents)."""
        return pattern_buffer(size_bytes)

    def _make_store(self, arrays: list[np.ndarray]) -> RegionBlockStore:
        """The block store over the buffer's layers (a subclass may give it a KV dtype)."""
        return RegionBlockStore.from_arrays(arrays)


class TcpConnectorSink:
    """Pulls the blocks with `transport.tcp.client.pull_blocks`, one connection per pull, as the connector does."""

    def pull(self, endpoint: dict[str, Any], size_bytes: int, repeats: int) -> dict[str, Any]:
        layout = layout_for(size_bytes)
        buffer = empty_buffer(size_bytes)
        store = RegionBlockStore.from_arrays(layer_arrays(buffer, layout), layout_id=endpoint["layout_id"])
        request = PullRequest(0, endpoint["num_blocks"], endpoint["block_nbytes"], endpoint["layout_id"])
        views, commit = store.write_views(list(range(layout.num_blocks)))
        seconds = []
        for index in range(repeats + 1):
            result = pull_blocks(endpoint["host"], endpoint["port"], f"bench-{index}", request, views,
                                 transfer_timeout_s=TRANSFER_TIMEOUT_S)
            commit()
            seconds.append(result.seconds)  # connect, PULL, every DATA frame received and checked
        return {"seconds": seconds[1:], "verified": holds_pattern(buffer)}


class SocketSource:
    """Serves the buffer with `sendall` on one blocking TCP connection, once per 8-byte request."""

    def __init__(self) -> None:
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._buffer: np.ndarray | None = None

    def prepare(self, size_bytes: int, transfers: int) -> dict[str, Any]:
        self._buffer = pattern_buffer(size_bytes)
        self._listener = socket.create_server((HOST, 0))
        self._thread = threading.Thread(target=self._serve, args=(self._listener, self._buffer, transfers),
                                        daemon=True)
        self._thread.start()
        return {"host": HOST, "port": self._listener.getsockname()[1]}

    def _serve(self, listener: socket.socket, buffer: np.ndarray, transfers: int) -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        self._conn = conn
        with conn:
            conn.settimeout(None)  # truly blocking: no poll() before every call
            payload = memoryview(buffer)
            for _ in range(transfers):
                header = conn.recv(_REQUEST.size, socket.MSG_WAITALL)
                if len(header) != _REQUEST.size:
                    return
                conn.sendall(payload[:_REQUEST.unpack(header)[0]])

    def release(self) -> dict[str, Any]:
        """Wait for the serving thread; after a failed pull, cut its sockets so that it ends."""
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            for sock in (self._listener, self._conn):
                if self._thread.is_alive() and sock is not None:
                    _shutdown_quietly(sock)
            self._thread.join(timeout=5.0)
        if self._listener is not None:
            self._listener.close()
        self._listener, self._conn, self._thread, self._buffer = None, None, None, None
        return {}

    def close(self) -> None:
        self.release()


def _shutdown_quietly(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class SocketSink:
    """Asks for the buffer and `recv_into`s it, on one blocking TCP connection kept for all pulls."""

    def pull(self, endpoint: dict[str, Any], size_bytes: int, repeats: int) -> dict[str, Any]:
        buffer = empty_buffer(size_bytes)
        view = memoryview(buffer)
        seconds = []
        with socket.create_connection((endpoint["host"], endpoint["port"]), timeout=TRANSFER_TIMEOUT_S) as conn:
            conn.settimeout(None)
            for _ in range(repeats + 1):
                started_s = time.perf_counter()
                conn.sendall(_REQUEST.pack(size_bytes))
                _receive_exactly(conn, view)
                seconds.append(time.perf_counter() - started_s)
        return {"seconds": seconds[1:], "verified": holds_pattern(buffer)}


def _receive_exactly(conn: socket.socket, view: memoryview) -> None:
    received = 0
    while received < len(view):
        got = conn.recv_into(view[received:], 0, socket.MSG_WAITALL)
        if not got:
            raise ConnectionError(f"peer closed after {received} of {len(view)} bytes")
        received += got


def memcpy_step(size_bytes: int, repeats: int) -> dict[str, Any]:
    """Copy the buffer within this process (`numpy.copyto`): one warm-up, then `repeats` timed copies."""
    source = pattern_buffer(size_bytes)
    target = empty_buffer(size_bytes)
    seconds = []
    for _ in range(repeats + 1):
        started_s = time.perf_counter()
        np.copyto(target, source)
        seconds.append(time.perf_counter() - started_s)
    return {"seconds": seconds[1:], "verified": holds_pattern(target)}
