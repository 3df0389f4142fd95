"""`disagg bench router`: arguments, one run of `bench.router_bench`, a table (and JSON) of what the router costs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.argtypes import positive_int

DESCRIPTION = """\
What the router itself costs: stub vLLM servers (no model; they answer at once) behind a colocated and a
disaggregated router, all on 127.0.0.1, measured against the stub directly in one run. One request at a time
(medians of time to first token and to the last byte; the router's overhead is its median minus the stub's),
then --concurrency streams at once for --duration-s (requests per second, and the ratio to the stub's). The
processes share this host's cores. Exit status: 0 when nothing failed, 1 when requests failed, 2 for bad
options."""

EPILOG = """\
examples:
  disagg bench router
  disagg bench router --requests 500 --concurrency 64 --duration-s 20 --json --output router.json"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-tokens", type=positive_int, default=16, help="streamed tokens per request (default 16)")
    parser.add_argument("--requests", type=positive_int, default=200,
                        help="requests one at a time, after 20 warm-up ones (default 200)")
    parser.add_argument("--concurrency", type=positive_int, default=64, help="streams at once (default 64)")
    parser.add_argument("--duration-s", type=float, default=10.0, help="seconds at --concurrency (default 10)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON results to this file")


def run(args: argparse.Namespace) -> int:
    from bench import router_bench

    settings = router_bench.RouterBenchSettings(max_tokens=args.max_tokens, requests_c1=args.requests,
                                               concurrency=args.concurrency, duration_s=args.duration_s)
    results = router_bench.run(settings)
    report = router_bench.as_json(settings, results)
    if args.output is not None:
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(results, report["routers"], settings)
    return 1 if any(r.failures for r in results) else 0


def _print_table(results: list, routers: dict, settings) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"router cost: {settings.max_tokens} streamed tokens per request")
    for column in ("target", "TTFT c=1 (ms)", "E2E c=1 (ms)", "TTFT overhead (ms)", "E2E overhead (ms)",
                   f"req/s c={settings.concurrency}", "× stub", "failures"):
        table.add_column(column, justify="right" if column != "target" else "left")
    for r in results:
        over = routers.get(r.name, {})
        table.add_row(r.name, f"{r.ttft_s_median * 1e3:.2f}", f"{r.e2e_s_median * 1e3:.2f}",
                      f"{over['ttft_overhead_ms']:+.2f}" if over else "", f"{over['e2e_overhead_ms']:+.2f}" if over else "",
                      f"{r.rps:.0f}", f"{over['throughput_ratio']:.2f}" if over else "1.00", str(r.failures))
    Console().print(table)
