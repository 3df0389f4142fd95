"""Text output of the transport benchmark: a rich table, progress lines and the target line."""

from __future__ import annotations

from rich.table import Table

from bench.xfer.bench import MEMCPY, SOCKET, TARGET_METHOD, BenchReport, Measurement
from bench.xfer.buffers import MIB

TARGET_RATIO_TO_SOCKET = 0.9
TARGET_MIN_SIZE_BYTES = 64 * MIB


def progress_line(measurement: Measurement, index: int, total: int) -> str:
    """One line per measurement, as the benchmark goes."""
    head = f"[{index:>2}/{total}] {measurement.method:<13} {measurement.size_bytes / MIB:>5g} MiB: "
    if measurement.gb_per_s is None:
        return head + f"{measurement.status} ({measurement.reason})"
    samples = " ".join(f"{s * 1e3:.1f}" for s in measurement.samples_s)
    return head + f"{measurement.gb_per_s:.2f} GB/s (timed ms: {samples})"


def bench_table(report: BenchReport) -> Table:
    """GB/s per method and size, with each one's ratio to the plain socket and to memcpy."""
    table = Table(title="transport bandwidth on 127.0.0.1 (GB/s = 10^9 B/s, median of "
                        f"{report.settings.repeats} after one warm-up)")
    for column in ("size MiB", "method", "GB/s", "× socket", "× memcpy", "note"):
        table.add_column(column, justify="left" if column in ("method", "note") else "right")
    for size_bytes in report.settings.sizes_bytes:
        for m in (m for m in report.measurements if m.size_bytes == size_bytes):
            table.add_row(f"{size_bytes / MIB:g}", m.method,
                          "-" if m.gb_per_s is None else f"{m.gb_per_s:.2f}",
                          _ratio(report.ratio(m.method, size_bytes, SOCKET)),
                          _ratio(report.ratio(m.method, size_bytes, MEMCPY)),
                          "" if m.status == "ok" else f"{m.status}: {m.reason}")
        table.add_section()
    return table


def target_line(report: BenchReport) -> str:
    """How the TCP connector compares with the plain socket at the sizes the target is about."""
    parts = []
    for size_bytes in report.settings.sizes_bytes:
        if size_bytes < TARGET_MIN_SIZE_BYTES:
            continue
        ratio = report.ratio(TARGET_METHOD, size_bytes, SOCKET)
        mark = "n/a" if ratio is None else f"{ratio:.2f} {'ok' if ratio >= TARGET_RATIO_TO_SOCKET else 'BELOW'}"
        parts.append(f"{size_bytes / MIB:g} MiB {mark}")
    if not parts:
        return ""
    return (f"target {TARGET_METHOD} >= {TARGET_RATIO_TO_SOCKET} x socket at >= "
            f"{TARGET_MIN_SIZE_BYTES // MIB} MiB: " + ", ".join(parts))


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
