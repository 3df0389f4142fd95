"""Transport micro-benchmark: how fast each way of moving KV bytes is on this host, size by size.

Methods (`methods()`): every registered transport's bench methods (`transport.base.BenchMethod`: our TCP
connector's data path, NIXL READ with UCX's defaults and with UCX restricted to TCP, ...), each between two
processes on 127.0.0.1, then the two baselines this benchmark owns: a plain blocking TCP socket (two
processes) and a memcpy inside one process. Each method runs its sizes in one pair of processes
(`bench.xfer.pair`); per size one warm-up transfer, then `repeats` timed ones, whose median is the result.
A method that cannot start (NIXL missing) or fails is reported with its reason; the rest still run. GB/s
are 10**9 bytes per second; sizes are MiB.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from bench.xfer import peers
from bench.xfer.buffers import MIB, layout_for
from bench.xfer.pair import PeerError, PeerGoneError, PeerPair, PeerUnavailableError
from transport import registry
from transport.base import BenchMethod

logger = logging.getLogger(__name__)

GB = 10**9
DEFAULT_SIZES_MB = (1, 16, 64, 256, 512)
SOCKET, MEMCPY = "socket", "memcpy"  # the baselines this benchmark owns
TARGET_METHOD = "tcp-connector"  # the method the target line compares with the socket (`bench.xfer.table`)
MAX_START_S = 120.0


@dataclass(frozen=True)
class Method:
    """One way of moving the bytes: a source/sink peer pair ("module:Class", see `bench.xfer.pair`) with extra
    environment for both processes, or no classes for a method measured inside this process (memcpy)."""

    name: str
    description: str
    source_class: str | None = None
    sink_class: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, method: BenchMethod) -> Method:
        """The benchmark's view of a transport's bench method."""
        return cls(method.name, method.description, method.source_class, method.sink_class, dict(method.env))


BASELINES: tuple[Method, ...] = (
    Method(SOCKET, "plain blocking TCP socket, sendall -> recv_into one buffer, 2 processes",
           "bench.xfer.peers:SocketSource", "bench.xfer.peers:SocketSink"),
    Method(MEMCPY, "numpy.copyto between two buffers in one process"),
)


def methods() -> tuple[Method, ...]:
    """Every method, in the order they run and are reported: `TARGET_METHOD` first (the one the target line
    is about), the other registered transports' bench methods in registry order, then the baselines.

    Asked of `transport.registry` at each call, so a transport registered later is included. A method whose
    name is already taken (by a baseline or an earlier transport) is left out with a warning.
    """
    found = {m.name: m for m in BASELINES}
    from_transports: list[Method] = []
    for transport in registry.all_transports():
        for spec in transport.bench_methods:
            if spec.name in found:
                logger.warning("bench method %r of transport %r is a duplicate; left out", spec.name, transport.name)
                continue
            found[spec.name] = Method.of(spec)
            from_transports.append(found[spec.name])
    from_transports.sort(key=lambda m: m.name != TARGET_METHOD)  # stable: the rest keep registry order
    return (*from_transports, *BASELINES)


def method_names() -> tuple[str, ...]:
    """The names of `methods()`, e.g. ("tcp-connector", "nixl-ucx", "nixl-ucx-tcp", "socket", "memcpy")."""
    return tuple(m.name for m in methods())


@dataclass(frozen=True)
class BenchSettings:
    """What to measure: sizes in bytes (whole 64 KiB KV blocks), timed repeats per size, a time budget for
    the whole run in seconds, and method names (default: all of `methods()`); ValueError when built wrong."""

    sizes_bytes: tuple[int, ...] = tuple(mb * MIB for mb in DEFAULT_SIZES_MB)
    repeats: int = 3
    max_duration_s: float = 900.0
    methods: tuple[str, ...] = field(default_factory=method_names)

    def __post_init__(self) -> None:
        if not self.sizes_bytes:
            raise ValueError("no sizes to measure")
        for size_bytes in self.sizes_bytes:
            layout_for(size_bytes)  # raises for a size that is not whole KV blocks
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, not {self.repeats}")
        if not self.max_duration_s > 0:
            raise ValueError(f"max_duration_s must be > 0, not {self.max_duration_s}")
        known = method_names()
        unknown = sorted(set(self.methods) - set(known))
        if unknown or not self.methods:
            raise ValueError(f"unknown methods {unknown}; known: {', '.join(known)}")


@dataclass(frozen=True)
class Measurement:
    """One method at one size: `status` is ok, unavailable, failed or skipped (with `reason`)."""

    method: str
    size_bytes: int
    status: str
    reason: str = ""
    samples_s: tuple[float, ...] = ()

    @property
    def gb_per_s(self) -> float | None:
        if self.status != "ok" or not self.samples_s:
            return None
        median_s = statistics.median(self.samples_s)
        return self.size_bytes / median_s / GB if median_s > 0 else None


@dataclass
class BenchReport:
    """Every measurement of one run, and the ratios between methods at each size."""

    settings: BenchSettings
    measurements: list[Measurement] = field(default_factory=list)
    elapsed_s: float = 0.0

    def get(self, method: str, size_bytes: int) -> Measurement | None:
        return next((m for m in self.measurements if m.method == method and m.size_bytes == size_bytes), None)

    def ratio(self, method: str, size_bytes: int, baseline: str) -> float | None:
        """GB/s of `method` over GB/s of `baseline` at this size; None when either has no figure."""
        mine, base = self.get(method, size_bytes), self.get(baseline, size_bytes)
        if mine is None or base is None or mine.gb_per_s is None or not base.gb_per_s:
            return None
        return mine.gb_per_s / base.gb_per_s

    def to_json(self) -> dict[str, Any]:
        rows = []
        for m in self.measurements:
            gb_per_s = m.gb_per_s
            rows.append({
                "method": m.method, "size_bytes": m.size_bytes, "size_mib": m.size_bytes / MIB,
                "status": m.status, "reason": m.reason, "samples_s": [round(s, 6) for s in m.samples_s],
                "gb_per_s": None if gb_per_s is None else round(gb_per_s, 4),
                "ratio_to_socket": _rounded(self.ratio(m.method, m.size_bytes, SOCKET)),
                "ratio_to_memcpy": _rounded(self.ratio(m.method, m.size_bytes, MEMCPY)),
            })
        return {
            "unit": "GB/s = 10**9 bytes/s; sizes in MiB; median of the timed repeats after one warm-up",
            "host": "127.0.0.1", "repeats": self.settings.repeats,
            "sizes_mib": [s / MIB for s in self.settings.sizes_bytes],
            "kv_layout": {f"{s / MIB:g}": layout_for(s).describe() for s in self.settings.sizes_bytes},
            "methods": {m.name: m.description for m in methods() if m.name in self.settings.methods},
            "elapsed_s": round(self.elapsed_s, 2), "results": rows,
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def run_bench(settings: BenchSettings,
              on_measurement: Callable[[Measurement], None] | None = None) -> BenchReport:
    """Measure every selected method at every size, within `settings.max_duration_s` in all, in the order of
    `methods()`; `on_measurement` is called with each measurement as it is made (progress)."""
    started_s = time.monotonic()
    deadline_s = started_s + settings.max_duration_s
    report = BenchReport(settings)
    for method in methods():
        if method.name not in settings.methods:
            continue
        logger.info("transport bench: %s", method.name)
        for measurement in _run_method(method, settings, deadline_s):
            report.measurements.append(measurement)
            if on_measurement is not None:
                on_measurement(measurement)
    report.elapsed_s = time.monotonic() - started_s
    return report


def _run_method(method: Method, settings: BenchSettings, deadline_s: float) -> Iterator[Measurement]:
    if method.source_class is None or method.sink_class is None:
        yield from _run_in_process(method, settings, deadline_s)
        return
    pair = PeerPair(method.source_class, method.sink_class, method.env)
    try:
        try:
            pair.wait_ready(min(MAX_START_S, max(deadline_s - time.monotonic(), 1.0)))
        except PeerUnavailableError as exc:
            yield from _all_sizes(method, settings, "unavailable", str(exc))
            return
        except PeerError as exc:
            yield from _all_sizes(method, settings, "failed", f"could not start: {exc}")
            return
        yield from _run_pair(method, pair, settings, deadline_s)
    finally:
        pair.close()


def _run_pair(method: Method, pair: PeerPair, settings: BenchSettings, deadline_s: float) -> Iterator[Measurement]:
    broken = ""
    for size_bytes in settings.sizes_bytes:
        remaining_s = deadline_s - time.monotonic()
        if broken or remaining_s <= 0:
            yield _not_run(method.name, size_bytes, broken, settings)
            continue
        try:
            reply = pair.transfer(size_bytes, settings.repeats, remaining_s)
        except PeerGoneError as exc:
            broken = f"at {size_bytes // MIB} MiB"
            yield Measurement(method.name, size_bytes, "failed", str(exc))
            continue
        except PeerError as exc:
            yield Measurement(method.name, size_bytes, "failed", str(exc))
            continue
        yield _measured(method.name, size_bytes, reply)


def _run_in_process(method: Method, settings: BenchSettings, deadline_s: float) -> Iterator[Measurement]:
    for size_bytes in settings.sizes_bytes:
        if time.monotonic() >= deadline_s:
            yield _not_run(method.name, size_bytes, "", settings)
            continue
        try:
            reply = peers.memcpy_step(size_bytes, settings.repeats)
        except (MemoryError, ValueError) as exc:
            yield Measurement(method.name, size_bytes, "failed", f"{type(exc).__name__}: {exc}")
            continue
        yield _measured(method.name, size_bytes, reply)


def _measured(method: str, size_bytes: int, reply: dict[str, Any]) -> Measurement:
    samples_s = tuple(float(s) for s in reply.get("seconds", ()))
    if not reply.get("verified"):
        return Measurement(method, size_bytes, "failed", "the bytes that arrived differ from those sent",
                           samples_s)
    return Measurement(method, size_bytes, "ok", "", samples_s)


def _not_run(method: str, size_bytes: int, broken: str, settings: BenchSettings) -> Measurement:
    if broken:
        return Measurement(method, size_bytes, "failed", f"not run: the peers broke {broken}")
    return Measurement(method, size_bytes, "skipped", f"--max-duration-s {settings.max_duration_s:g} reached")


def _all_sizes(method: Method, settings: BenchSettings, status: str, reason: str) -> Iterator[Measurement]:
    for size_bytes in settings.sizes_bytes:
        yield Measurement(method.name, size_bytes, status, reason)
