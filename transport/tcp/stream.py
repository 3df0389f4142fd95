"""Socket I/O for the transport: blocking calls bounded by a deadline, as few system calls as possible.

The connector's threads share their process with a vLLM worker whose main thread keeps the GIL busy; every
system call that blocks hands the GIL over and costs up to one switch interval (5 ms) to get it back. So a
whole frame is sent with one `sendmsg` (header and all block pieces gathered) and received with one
`recvmsg_into(MSG_WAITALL)`, on a blocking socket whose deadline the kernel enforces (SO_RCVTIMEO /
SO_SNDTIMEO), instead of Python-level timeouts that loop over non-blocking calls.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Sequence

from transport.tcp.errors import TransferTimeoutError, TruncatedError

IOV_BATCH = 512  # buffers per system call, under Linux's IOV_MAX (1024)
Buffer = memoryview | bytes | bytearray


def make_blocking(sock: socket.socket) -> None:
    """Blocking mode; deadlines are then armed per call in the kernel."""
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def send_buffers(sock: socket.socket, buffers: Sequence[Buffer], deadline_s: float) -> None:
    """Send every buffer, in order, before the monotonic `deadline_s`."""
    pending = [memoryview(b).cast("B") for b in buffers if len(b)]
    while pending:
        _arm(sock, socket.SO_SNDTIMEO, deadline_s)
        try:
            sent = sock.sendmsg(pending[:IOV_BATCH])
        except BlockingIOError:
            raise TransferTimeoutError("send timed out") from None
        pending = _advance(pending, sent)


def recv_into_buffers(sock: socket.socket, buffers: Sequence[memoryview], deadline_s: float, *,
                      eof_ok: bool = False) -> int:
    """Fill every buffer, in order, before `deadline_s`; returns the bytes read.

    With `eof_ok`, a peer that closes before the first byte is not an error: 0 is returned.
    """
    pending = [b for b in buffers if len(b)]
    total = sum(len(b) for b in pending)
    received = 0
    while pending:
        _arm(sock, socket.SO_RCVTIMEO, deadline_s)
        try:
            got = sock.recvmsg_into(pending[:IOV_BATCH], 0, socket.MSG_WAITALL)[0]
        except BlockingIOError:
            raise TransferTimeoutError(f"timed out after {received} of {total} bytes") from None
        if got == 0:
            if eof_ok and received == 0:
                return 0
            raise TruncatedError(f"connection closed after {received} of {total} bytes")
        received += got
        pending = _advance(pending, got)
    return received


def recv_exact(sock: socket.socket, nbytes: int, deadline_s: float) -> bytes:
    buf = bytearray(nbytes)
    recv_into_buffers(sock, [memoryview(buf)], deadline_s)
    return bytes(buf)


def _advance(buffers: list[memoryview], nbytes: int) -> list[memoryview]:
    """The buffers left after `nbytes` of them were transferred."""
    index = 0
    while index < len(buffers) and nbytes >= len(buffers[index]):
        nbytes -= len(buffers[index])
        index += 1
    rest = buffers[index:]
    if nbytes:
        rest[0] = rest[0][nbytes:]
    return rest


def _arm(sock: socket.socket, option: int, deadline_s: float) -> None:
    remaining_s = deadline_s - time.monotonic()
    if remaining_s <= 0:
        raise TransferTimeoutError("deadline passed")
    seconds = int(remaining_s)
    micros = max(int((remaining_s - seconds) * 1e6), 1 if seconds == 0 else 0)  # 0 would mean "no timeout"
    sock.setsockopt(socket.SOL_SOCKET, option, struct.pack("ll", seconds, micros))
