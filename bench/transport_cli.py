"""`disagg bench transport`: arguments, one run of the transport micro-benchmark (`bench.xfer`), its output.

The method list comes from `bench.xfer.bench.methods()`: every registered transport's bench methods plus the
`socket` and `memcpy` baselines, so `--methods` accepts a transport registered by a plugin without a change
here. Heavy modules (rich, numpy, the peers) load only when the command runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.argtypes import positive_float, positive_int
from core.errors import ConfigError


def _mib_list(text: str) -> list[int]:
    return [positive_int(part.strip()) for part in text.split(",") if part.strip()]


def _name_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """All `bench transport` options; `--methods` lists the methods registered when the parser is built."""
    from bench.xfer.bench import method_names

    parser.add_argument("--sizes-mb", type=_mib_list, default=None,
                        help="comma-separated MiB per transfer (default 1,16,64,256,512)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed transfers per size (default 3)")
    parser.add_argument("--methods", type=_name_list, default=None,
                        help=f"comma-separated subset of {','.join(method_names())}")
    parser.add_argument("--max-duration-s", type=positive_float, default=900.0,
                        help="stop starting new measurements after this long (default 900)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON results to this file")


def run(args: argparse.Namespace) -> int:
    """Entry point: 0 when no measurement failed (unavailable and skipped are not failures), 1 when one did;
    ConfigError (exit 2) for sizes that are not whole KV blocks or unknown methods."""
    from rich.console import Console

    from bench.xfer import bench as xfer_bench
    from bench.xfer import table as xfer_table

    try:
        settings = xfer_bench.BenchSettings(
            sizes_bytes=tuple(mb * xfer_bench.MIB for mb in (args.sizes_mb or xfer_bench.DEFAULT_SIZES_MB)),
            repeats=args.repeats, max_duration_s=args.max_duration_s,
            methods=tuple(args.methods or xfer_bench.method_names()))
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
