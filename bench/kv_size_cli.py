"""`disagg kv-size`: arguments, the report (a plain dict, also the `--json` output) and its table."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from bench import kv_size as kv
from bench.argtypes import non_negative_float, positive_float, positive_int

_PARAM_SUFFIXES = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}


def parse_param_count(text: str) -> float:
    """`8B`, `135M`, `70e9`, `8030261248` → a number of parameters."""
    value = text.strip().upper()
    scale = _PARAM_SUFFIXES.get(value[-1:], 1.0)
    if value[-1:] in _PARAM_SUFFIXES:
        value = value[:-1]
    try:
        count = float(value) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a parameter count: {text!r} (e.g. 8B, 135M, 7e9)") from None
    if count < 0:
        raise argparse.ArgumentTypeError(f"parameter count must not be negative: {text!r}")
    return count


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", metavar="PATH",
                        help="a model's config.json, or the model folder that holds it")
    source.add_argument("--preset", metavar="NAME",
                        help=f"a built-in model (case-insensitive): {', '.join(kv.PRESETS)}")
    source.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    parser.add_argument("--dtype", choices=list(kv.DTYPE_BYTES),
                        help="KV cache element type (default: the config's torch_dtype, fp16 if absent)")
    parser.add_argument("--context-tokens", type=positive_int, default=4096, metavar="N",
                        help="tokens per sequence, prompt + output (default: 4096)")
    parser.add_argument("--concurrency", type=positive_int, default=1, metavar="N",
                        help="sequences held at once, for the memory line (default: 1)")
    parser.add_argument("--overhead-factor", type=float, default=kv.DEFAULT_OVERHEAD_FACTOR, metavar="PHI",
                        help="multiplier φ on raw KV bytes for block padding, fragmentation and activations; "
                             "accepted 1.0-2.0, typical 1.1-1.3 (default: 1.2)")
    parser.add_argument("--memory-gib", type=non_negative_float, metavar="GIB",
                        help="KV memory available, in GiB (2^30 B): prints how many sequences fit")
    parser.add_argument("--bandwidth-gb-s", type=positive_float, metavar="GBPS",
                        help="link bandwidth in GB/s (10^9 B/s): prints the time to transfer one sequence's KV")
    parser.add_argument("--decode-tokens-per-s", type=non_negative_float, metavar="TPS",
                        help="target decode rate, tokens/s over all sequences: prints the memory bandwidth it needs")
    parser.add_argument("--avg-context-tokens", type=positive_int, metavar="N",
                        help="average context during decode, for the bandwidth line (default: --context-tokens)")
    parser.add_argument("--params", type=parse_param_count, metavar="COUNT",
                        help="model parameter count (e.g. 8B, 135M): adds weight reads to the bandwidth line "
                             "(default: weights left out)")
    parser.add_argument("--weight-dtype", choices=list(kv.DTYPE_BYTES),
                        help="element type of the weights for --params (default: the KV dtype)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")


def build_report(geometry: kv.KVGeometry, args: argparse.Namespace) -> dict[str, Any]:
    """Everything `kv-size` prints, as a JSON-ready dict. Raises ValueError on bad numbers."""
    kv.check_overhead_factor(args.overhead_factor)
    per_sequence = kv.kv_bytes_per_sequence(geometry, args.context_tokens)
    report: dict[str, Any] = {
        "model": {"name": geometry.name, "attention": geometry.attention_kind,
                  "num_layers": geometry.num_layers, "num_attention_heads": geometry.num_attention_heads,
                  "num_kv_heads": geometry.num_kv_heads, "head_dim": geometry.head_dim,
                  "dtype": geometry.dtype, "bytes_per_element": geometry.bytes_per_element},
        "kv_bytes_per_token": geometry.kv_bytes_per_token,
        "context_tokens": args.context_tokens,
        "kv_bytes_per_sequence": per_sequence,
        "concurrency": args.concurrency,
        "overhead_factor": args.overhead_factor,
        "kv_memory_bytes": kv.kv_memory_bytes(geometry, args.context_tokens, args.concurrency,
                                              args.overhead_factor),
    }
    if args.memory_gib is not None:
        memory_bytes = int(args.memory_gib * kv.GIB)
        report["memory_gib"] = args.memory_gib
        report["max_sequences"] = kv.max_sequences(geometry, memory_bytes, args.context_tokens,
                                                   args.overhead_factor)
    if args.bandwidth_gb_s is not None:
        report["bandwidth_gb_s"] = args.bandwidth_gb_s
        report["transfer_time_s"] = kv.transfer_time_s(per_sequence, args.bandwidth_gb_s)
    if args.decode_tokens_per_s is not None:
        report["decode"] = _decode_report(geometry, args)
    return report


def _decode_report(geometry: kv.KVGeometry, args: argparse.Namespace) -> dict[str, Any]:
    avg_context = args.avg_context_tokens if args.avg_context_tokens is not None else args.context_tokens
    weight_dtype = args.weight_dtype or geometry.dtype
    num_params = args.params or 0
    return {
        "tokens_per_s": args.decode_tokens_per_s, "avg_context_tokens": avg_context,
        "concurrency": args.concurrency, "num_params": num_params, "weight_dtype": weight_dtype,
        "bandwidth_gb_s": kv.decode_bandwidth_gb_s(
            geometry, args.decode_tokens_per_s, avg_context, num_params=num_params,
            weight_bytes_per_param=kv.DTYPE_BYTES[weight_dtype], concurrency=args.concurrency),
    }


def format_bytes(num_bytes: float) -> str:
    """`536870912` → `536,870,912 B (512.0 MiB)`."""
    scaled, unit = float(num_bytes), "B"
    for next_unit in ("KiB", "MiB", "GiB", "TiB"):
        if scaled < 1024:
            break
        scaled, unit = scaled / 1024, next_unit
    exact = f"{int(num_bytes):,} B"
    return exact if unit == "B" else f"{exact} ({scaled:.1f} {unit})"


def report_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The report as (label, value) lines for the table."""
    model = report["model"]
    rows = [
        ("model", f"{model['name']} ({model['attention']})"),
        ("layers × kv heads × head_dim",
         f"{model['num_layers']} × {model['num_kv_heads']} (of {model['num_attention_heads']}) "
         f"× {model['head_dim']}"),
        ("dtype", f"{model['dtype']} ({model['bytes_per_element']} B/element)"),
        ("KV per token", format_bytes(report["kv_bytes_per_token"])),
        (f"KV per sequence @ {report['context_tokens']:,} tokens", format_bytes(report["kv_bytes_per_sequence"])),
        (f"memory for {report['concurrency']} seq × φ={report['overhead_factor']}",
         format_bytes(report["kv_memory_bytes"])),
    ]
    if "max_sequences" in report:
        rows.append((f"sequences fitting in {report['memory_gib']} GiB", f"{report['max_sequences']:,}"))
    if "transfer_time_s" in report:
        rows.append((f"one sequence over {report['bandwidth_gb_s']} GB/s",
                     f"{report['transfer_time_s'] * 1000:.3f} ms"))
    if "decode" in report:
        decode = report["decode"]
        what = "KV + weights" if decode["num_params"] else "KV only"
        rows.append((f"bandwidth for {decode['tokens_per_s']:g} tok/s @ {decode['avg_context_tokens']:,} ctx",
                     f"{decode['bandwidth_gb_s']:.2f} GB/s ({what})"))
    return rows


def _print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="KV cache size", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    for label, value in report_rows(report):
        table.add_row(label, value)
    Console().print(table)


def _print_presets() -> None:
    for name, (layers, heads, kv_heads, head_dim, dtype, note) in kv.PRESETS.items():
        geometry = kv.preset_geometry(name)
        print(f"{name:15} {layers:3} layers, {heads:3} heads, {kv_heads:2} kv heads, head_dim {head_dim:3}, "
              f"{dtype:4} → {geometry.kv_bytes_per_token:>9,} B/token  ({note})")


def run(args: argparse.Namespace) -> int:
    """Entry point of `disagg kv-size`; returns the exit code (2 for bad input)."""
    if args.list_presets:
        _print_presets()
        return 0
    if not args.config and not args.preset:
        print("disagg kv-size: error: give --config PATH or --preset NAME (see --list-presets)", file=sys.stderr)
        return 2
    try:
        geometry = kv.load_config_geometry(args.config) if args.config else kv.preset_geometry(args.preset)
        if args.dtype:
            geometry = dataclasses.replace(geometry, dtype=args.dtype)
        report = build_report(geometry, args)
    except (kv.ModelConfigError, ValueError) as exc:
        print(f"disagg kv-size: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(report)
    return 0
