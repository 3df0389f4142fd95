"""Link bandwidth: a plain blocking TCP stream between two processes, the way a KV transfer moves bytes.

A receiver process (`python -m bench.linkspeed --receive HOST TOTAL CHUNK`) listens on `host` (the KV
link's local address; 127.0.0.1 for one-host clusters), prints its port, receives into one reusable
buffer and prints `bytes seconds` as JSON. This process connects and `sendall`s `total_bytes` from a
`chunk_bytes` buffer. The clock runs on the receiving side from the first byte's arrival to the last, so
connection setup and process start are excluded. Reported in GB/s (10**9 B/s), the unit links are quoted
in. Processes, not threads, so sender and receiver do not share one interpreter's GIL.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GB = 10**9
MIB = 2**20
DEFAULT_TOTAL_BYTES = 128 * MIB
DEFAULT_CHUNK_BYTES = 4 * MIB
TIMEOUT_S = 60.0


class LinkSpeedError(RuntimeError):
    """The measurement could not run (no address to bind, receiver died, timeout)."""


@dataclass(frozen=True)
class LinkMeasurement:
    """Repeated bandwidth measurements over a TCP stream; `gb_per_s` is their median."""

    host: str
    total_bytes: int
    samples_gb_s: tuple[float, ...]
    method: str

    @property
    def gb_per_s(self) -> float:
        return statistics.median(self.samples_gb_s) if self.samples_gb_s else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "total_bytes": self.total_bytes, "method": self.method,
                "samples_gb_s": [round(sample, 4) for sample in self.samples_gb_s],
                "gb_per_s": round(self.gb_per_s, 4)}


def measure_tcp_bandwidth(host: str = "127.0.0.1", total_bytes: int = DEFAULT_TOTAL_BYTES,
                          chunk_bytes: int = DEFAULT_CHUNK_BYTES, repeats: int = 3) -> LinkMeasurement:
    """Stream `total_bytes` over one TCP connection to a receiver process on `host`, `repeats` times."""
    if not total_bytes > chunk_bytes > 0 or repeats < 1:
        raise ValueError(f"need total_bytes > chunk_bytes > 0 and repeats >= 1, got {total_bytes}, "
                         f"{chunk_bytes}, {repeats}")
    samples = []
    for _ in range(repeats):
        timed_bytes, elapsed_s = _measure_once(host, total_bytes, chunk_bytes)
        samples.append(timed_bytes / elapsed_s / GB if elapsed_s > 0 else 0.0)
    result = LinkMeasurement(host=host, total_bytes=total_bytes, samples_gb_s=tuple(samples),
                             method=f"median of {repeats} runs of one blocking TCP stream between two "
                                    f"processes on {host}, {total_bytes // MIB} MiB in {chunk_bytes // MIB} "
                                    "MiB writes")
    log.info("link bandwidth on %s: %.2f GB/s (median of %s GB/s)", host, result.gb_per_s,
             ", ".join(f"{sample:.2f}" for sample in samples))
    return result


def _measure_once(host: str, total_bytes: int, chunk_bytes: int) -> tuple[int, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                      os.environ.get("PYTHONPATH")]))}
    argv = [sys.executable, "-m", "bench.linkspeed", "--receive", host, str(total_bytes), str(chunk_bytes)]
    receiver = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        port = int(_read_line(receiver))
        _send(host, port, total_bytes, chunk_bytes)
        timed_bytes, elapsed_s = json.loads(_read_line(receiver))
    except (OSError, ValueError) as exc:
        raise LinkSpeedError(f"TCP bandwidth test on {host} failed: {exc}") from None
    finally:
        try:
            receiver.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            receiver.kill()
            receiver.wait()
    return int(timed_bytes), float(elapsed_s)


def _read_line(receiver: subprocess.Popen[str]) -> str:
    assert receiver.stdout is not None
    line = receiver.stdout.readline().strip()
    if not line:
        stderr = receiver.stderr.read() if receiver.stderr and receiver.poll() is not None else ""
        raise LinkSpeedError(f"the receiver process exited early: {stderr.strip()[-500:]}")
    return line


def _send(host: str, port: int, total_bytes: int, chunk_bytes: int) -> None:
    payload = memoryview(bytes(chunk_bytes))
    with socket.create_connection((host, port), timeout=TIMEOUT_S) as conn:
        sent = 0
        while sent < total_bytes:
            size = min(chunk_bytes, total_bytes - sent)
            conn.sendall(payload[:size])
            sent += size
        if conn.recv(1) != b"k":
            raise LinkSpeedError("the receiver closed before acknowledging")


def receive(host: str, total_bytes: int, chunk_bytes: int) -> tuple[int, float]:
    """Receiver side: accept one connection, receive `total_bytes`; return (bytes timed, seconds).

    The bytes of the first `recv_into` start the clock and are not counted."""
    with socket.create_server((host, 0)) as listener:
        listener.settimeout(TIMEOUT_S)
        sys.stdout.write(f"{listener.getsockname()[1]}\n")
        sys.stdout.flush()
        conn, _ = listener.accept()
    with conn:
        conn.settimeout(TIMEOUT_S)
        buffer = memoryview(bytearray(chunk_bytes))
        first = received = conn.recv_into(buffer)
        started_s = time.perf_counter()
        while received < total_bytes:
            got = conn.recv_into(buffer, min(chunk_bytes, total_bytes - received))
            if not got:
                raise LinkSpeedError(f"sender closed after {received} of {total_bytes} bytes")
            received += got
        elapsed_s = time.perf_counter() - started_s
        conn.sendall(b"k")
    return received - first, elapsed_s


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "--receive":
        sys.exit("usage: python -m bench.linkspeed --receive HOST TOTAL_BYTES CHUNK_BYTES")
    timed_bytes, seconds = receive(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    sys.stdout.write(json.dumps([timed_bytes, seconds]) + "\n")
