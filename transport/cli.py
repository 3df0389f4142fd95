"""The transport's subcommands: `disagg doctor` and `disagg bench transport`.

`disagg.cli` calls `add_parsers(subparsers)` (doctor); `bench.cli` calls `add_bench_parser(bench_sub)`
(bench transport). Each leaf parser sets `func(args) -> int`. Heavy modules load only when a command runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.errors import ConfigError

_FORMATTER = argparse.RawDescriptionHelpFormatter

DOCTOR_DESCRIPTION = """\
What this host has for disaggregated serving: cores, vLLM (version, CPU or CUDA platform), the NVIDIA
driver, NIXL (version, plugins), UCX (version, transports), RDMA devices, what `--transport auto` picks
for a link to --peer and why, and (unless --no-bench) the bandwidth of each transport on 127.0.0.1 at
one size. A missing optional piece is reported, never fatal. Exit status 0; 2 for bad options."""

BENCH_DESCRIPTION = """\
Moves KV-shaped buffers (16 layers of 64 KiB blocks) between two processes on 127.0.0.1 with:
  tcp-connector  our TCP KV connector's block server and pull client (frames, CRC-32C)
  nixl-ucx       a NIXL READ of the blocks, UCX with its default transports
  nixl-ucx-tcp   the same with UCX restricted to TCP (UCX_TLS=tcp)
  socket         a plain blocking TCP socket (sendall -> recv_into)
and memcpy (numpy.copyto in one process). Per size: one warm-up, then --repeats timed transfers, the
median reported in GB/s (10^9 B/s) with its ratio to socket and memcpy. Unavailable or failing methods
are reported with the reason. Exit status: 0 when no measurement failed (unavailable and skipped are not
failures), 1 when one did, 2 for bad options."""

BENCH_EPILOG = """\
examples:
  disagg bench transport
  disagg bench transport --sizes-mb 1,64 --repeats 5 --methods tcp-connector,socket,memcpy
  disagg bench transport --json --output transport.json --max-duration-s 300"""


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add `doctor` to the `disagg` subcommands."""
    parser = subparsers.add_parser(
        "doctor", help="what this host has: vLLM, CUDA, NIXL, UCX, RDMA, bandwidth",
        description=DOCTOR_DESCRIPTION, formatter_class=_FORMATTER)
    parser.add_argument("--peer", default="127.0.0.1", help="peer address for the `auto` choice (default 127.0.0.1)")
    parser.add_argument("--no-bench", action="store_true", help="skip the loopback bandwidth measurement")
    parser.add_argument("--bench-size-mb", type=_positive_int, default=64, help="MiB per transfer (default 64)")
    parser.add_argument("--bench-repeats", type=_positive_int, default=3, help="timed transfers (default 3)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.set_defaults(func=run_doctor)


def add_bench_parser(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add `transport` to the `disagg bench` subcommands."""
    parser = bench_subparsers.add_parser(
        "transport", help="KV transport bandwidth: TCP connector, NIXL, socket, memcpy",
        description=BENCH_DESCRIPTION, epilog=BENCH_EPILOG, formatter_class=_FORMATTER)
    parser.add_argument("--sizes-mb", type=_mib_list, default=None,
                        help="comma-separated MiB per transfer (default 1,16,64,256,512)")
    parser.add_argument("--repeats", type=_positive_int, default=3, help="timed transfers per size (default 3)")
    parser.add_argument("--methods", type=_name_list, default=None,
                        help="comma-separated subset of tcp-connector,nixl-ucx,nixl-ucx-tcp,socket,memcpy")
    parser.add_argument("--max-duration-s", type=_positive_float, default=900.0,
                        help="stop starting new measurements after this long (default 900)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON results to this file")
    parser.set_defaults(func=run_bench)


def run_doctor(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from transport import doctor

    if not args.json:
        Console(stderr=True).print("probing vLLM and NIXL in child processes"
                                   + ("" if args.no_bench else f", then {args.bench_size_mb} MiB transfers"))
    report = doctor.collect(args.peer, bench=not args.no_bench, bench_size_mib=args.bench_size_mb,
                            bench_repeats=args.bench_repeats)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    table = Table(title="disagg doctor")
    for column in ("section", "item", "value"):
        table.add_column(column, overflow="fold")
    previous = None
    for section, item, value in doctor.rows(report):
        table.add_row(section if section != previous else "", item, value, end_section=False)
        previous = section
    Console().print(table)
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from rich.console import Console

    from bench.xfer import bench as xfer_bench
    from bench.xfer import table as xfer_table

    try:
        settings = xfer_bench.BenchSettings(
            sizes_bytes=tuple(mb * xfer_bench.MIB for mb in (args.sizes_mb or xfer_bench.DEFAULT_SIZES_MB)),
            repeats=args.repeats, max_duration_s=args.max_duration_s,
            methods=tuple(args.methods or xfer_bench.METHOD_NAMES))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    progress = Console(stderr=True)
    total = len(settings.sizes_bytes) * len(settings.methods)
    counter = iter(range(1, total + 1))
    report = xfer_bench.run_bench(
        settings, lambda m: progress.print(xfer_table.progress_line(m, next(counter), total), highlight=False))
    results = report.to_json()
    if args.output is not None:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        Console().print(xfer_table.bench_table(report))
        line = xfer_table.target_line(report)
        if line:
            print(line)
    return 1 if any(m.status == "failed" for m in report.measurements) else 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _mib_list(text: str) -> list[int]:
    return [_positive_int(part.strip()) for part in text.split(",") if part.strip()]


def _name_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]

