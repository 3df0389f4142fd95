"""The transport's subcommand: `disagg doctor`.

`disagg.cli` calls `add_parsers(subparsers)`; the parser sets `func(args) -> int`. The doctor's modules load
only when it runs. (`disagg bench transport` lives with the other benchmarks: `bench.transport_cli`.)
"""

from __future__ import annotations

import argparse
import json

_FORMATTER = argparse.RawDescriptionHelpFormatter

DOCTOR_DESCRIPTION = """\
What this host has for disaggregated serving: cores, vLLM (version, CPU or CUDA platform), the NVIDIA
driver, the facts that decide where NIXL registers KV (GPU model, unified memory, GPUDirect RDMA) and what
`--kv-buffer-device auto` picks for a link to --peer, each registered transport as its own probe sees it (nixl: NIXL's version and plugins, UCX's
version and transports), RDMA devices, what `--transport auto` picks for a link to --peer and why (every
transport's verdict), and (unless --no-bench) each transport's bandwidth through its own data path on
127.0.0.1 at one size (`disagg bench transport` compares them at several). A missing optional piece is
reported, never fatal. Exit status 0; 2 for bad options."""


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add `doctor` to the `disagg` subcommands."""
    parser = subparsers.add_parser(
        "doctor", help="what this host has: vLLM, CUDA, each transport (NIXL, UCX, tcp), RDMA, bandwidth",
        description=DOCTOR_DESCRIPTION, formatter_class=_FORMATTER)
    parser.add_argument("--peer", default="127.0.0.1", help="peer address for the `auto` choice (default 127.0.0.1)")
    parser.add_argument("--no-bench", action="store_true", help="skip the loopback bandwidth measurement")
    parser.add_argument("--bench-size-mb", type=_positive_int, default=64, help="MiB per transfer (default 64)")
    parser.add_argument("--bench-repeats", type=_positive_int, default=3, help="timed transfers (default 3)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.set_defaults(func=run_doctor)


def run_doctor(args: argparse.Namespace) -> int:
    """Entry point of `disagg doctor`: the report as a table, or as JSON with --json; always 0."""
    from rich.console import Console
    from rich.table import Table

    from transport import doctor

    if not args.json:
        Console(stderr=True).print("probing vLLM and each transport (NIXL in a child process)"
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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value
