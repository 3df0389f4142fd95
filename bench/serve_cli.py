"""`disagg bench serve`: arguments, wiring (dataset → load run → summary), results file and printed summary."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from bench import datasets
from bench.argtypes import non_negative_int, positive_float, positive_int
from bench.client import COMPLETIONS, ENDPOINTS, EndpointError
from bench.loadgen import LoadRun, LoadSettings, run_load
from bench.metrics import RequestResult, parse_goodput, summarize

log = logging.getLogger(__name__)


def _goodput_arg(text: str) -> dict[str, float]:
    try:
        return parse_goodput(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate_arg(text: str) -> float:
    return math.inf if text.strip().lower() in ("inf", "infinity") else positive_float(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """All `bench serve` options, in four groups."""
    _add_target_arguments(parser.add_argument_group("target"))
    _add_prompt_arguments(parser.add_argument_group("prompts"))
    _add_load_arguments(parser.add_argument_group("load"))
    out = parser.add_argument_group("results")
    out.add_argument("--goodput", type=_goodput_arg, metavar="LIMITS",
                     help="count requests meeting all limits, e.g. ttft_ms=500,tpot_ms=50 (keys: ttft_ms, "
                          "tpot_ms, e2e_ms; default: no goodput)")
    out.add_argument("--output", type=Path, metavar="FILE", help="write the results as JSON to FILE")
    out.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _add_target_arguments(target: argparse._ArgumentGroup) -> None:
    target.add_argument("--url", required=True, help="base URL of the OpenAI-compatible server, "
                        "e.g. http://127.0.0.1:8000 (a trailing /v1 is accepted)")
    target.add_argument("--endpoint", choices=ENDPOINTS, default=COMPLETIONS,
                        help=f"API to call (default: {COMPLETIONS})")
    target.add_argument("--model", help="model name to send (default: the first id from GET /v1/models)")
    target.add_argument("--api-key", metavar="KEY",
                        help="sent as 'Authorization: Bearer KEY' (default: none)")


def _add_prompt_arguments(data: argparse._ArgumentGroup) -> None:
    data.add_argument("--dataset", choices=datasets.DATASET_NAMES, default="random",
                      help="random: independent random prompts; prefix: one shared prefix + a unique suffix "
                           "each; sharegpt: first human turn of conversations in --sharegpt-path (default: random)")
    data.add_argument("--input-len", type=positive_int, default=512, metavar="TOKENS",
                      help="prompt length in tokens for random; the unique suffix length for prefix (default: 512)")
    data.add_argument("--prefix-len", type=positive_int, default=256, metavar="TOKENS",
                      help="shared prefix length in tokens for the prefix dataset (default: 256)")
    data.add_argument("--sharegpt-path", metavar="FILE", help="ShareGPT-format JSON file (needed for sharegpt)")
    data.add_argument("--tokenizer", metavar="PATH",
                      help="local Hugging Face tokenizer/model folder for exact prompt lengths (needs "
                           "transformers); without it random text is built from a word list and lengths "
                           "are approximate")
    data.add_argument("--max-tokens", type=positive_int, metavar="TOKENS",
                      help="output tokens to ask for per request (default: 128; for sharegpt the recorded "
                           f"reply's length, at most {datasets.SHAREGPT_MAX_OUTPUT_TOKENS})")
    data.add_argument("--ignore-eos", action="store_true",
                      help="send ignore_eos: true so every request generates exactly --max-tokens (vLLM, SGLang)")
    data.add_argument("--temperature", type=float, default=0.0, metavar="T",
                      help="sampling temperature (default: 0.0)")
    data.add_argument("--seed", type=int, default=0, metavar="N",
                      help="seed for prompts and Poisson arrival times; the same seed gives the same prompts, "
                           "so a server's prefix cache hits on a repeated run unless it is changed (default: 0)")


def _add_load_arguments(load: argparse._ArgumentGroup) -> None:
    load.add_argument("--num-requests", type=positive_int, default=100, metavar="N",
                      help="measured requests (default: 100)")
    load.add_argument("--num-warmup", type=non_negative_int, default=2, metavar="N",
                      help="requests sent first and not counted (default: 2)")
    load.add_argument("--concurrency", type=positive_int, metavar="N",
                      help="requests in flight: a closed loop of N; with --request-rate, a cap (default: 1 "
                           "without --request-rate, no cap with it)")
    load.add_argument("--request-rate", type=_rate_arg, metavar="REQ_PER_S",
                      help="Poisson arrivals at this many requests/s; 'inf' sends all at once "
                           "(default: off, i.e. closed loop)")
    load.add_argument("--timeout-s", type=positive_float, default=120.0, metavar="SECONDS",
                      help="limit per request, seconds, counted as a 'timeout' failure (default: 120)")
    load.add_argument("--max-duration-s", type=positive_float, default=600.0, metavar="SECONDS",
                      help="limit for the whole run incl. warm-up, seconds; later requests are not sent and "
                           "in-flight ones are cancelled (default: 600)")


def build_dataset(args: argparse.Namespace, num_prompts: int) -> datasets.Dataset:
    """The prompts for warm-up + measured requests, from the parsed arguments."""
    tokenizer = datasets.load_tokenizer(args.tokenizer) if args.tokenizer else None
    max_tokens = args.max_tokens or 128
    if args.dataset == "random":
        return datasets.random_dataset(num_prompts, args.input_len, max_tokens, args.seed, tokenizer)
    if args.dataset == "prefix":
        return datasets.prefix_dataset(num_prompts, args.prefix_len, args.input_len, max_tokens, args.seed,
                                       tokenizer)
    if not args.sharegpt_path:
        raise datasets.DatasetError("--dataset sharegpt needs --sharegpt-path FILE")
    return datasets.sharegpt_dataset(args.sharegpt_path, num_prompts, args.max_tokens, args.seed, tokenizer)


def build_settings(args: argparse.Namespace) -> LoadSettings:
    return LoadSettings(
        base_url=args.url, endpoint=args.endpoint, model=args.model, concurrency=args.concurrency,
        request_rate_per_s=args.request_rate, timeout_s=args.timeout_s, max_duration_s=args.max_duration_s,
        ignore_eos=args.ignore_eos, temperature=args.temperature, seed=args.seed, api_key=args.api_key)


def build_results(settings: LoadSettings, dataset: datasets.Dataset, load_run: LoadRun,
                  goodput_limits_ms: dict[str, float] | None) -> dict[str, Any]:
    """The results file: settings, dataset facts, the summary (top level) and one record per request."""
    settings_json = {k: v for k, v in dataclasses.asdict(settings).items() if k != "api_key"}
    if settings.request_rate_per_s is not None and math.isinf(settings.request_rate_per_s):
        settings_json["request_rate_per_s"] = "inf"
    prompts = dataset.prompts
    return {
        "benchmark": "serve",
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": load_run.model,
        "settings": settings_json,
        "dataset": {"name": dataset.name, "num_prompts": len(prompts), "exact_lengths": dataset.exact_lengths,
                    "note": dataset.note,
                    "mean_prompt_tokens": sum(p.prompt_tokens for p in prompts) / len(prompts) if prompts else 0,
                    "mean_max_tokens": sum(p.max_tokens for p in prompts) / len(prompts) if prompts else 0},
        "warmup": {"num_requests": len(load_run.warmup_results),
                   "num_ok": sum(1 for r in load_run.warmup_results if r.ok)},
        "num_not_started": load_run.num_not_started,
        **summarize(load_run.results, load_run.duration_s, goodput_limits_ms),
        "requests": [result.to_json() for result in load_run.results],
    }


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    """The printed summary as (label, value) lines."""
    rows = [("model", str(results["model"])),
            ("requests ok / failed / cancelled",
             f"{results['num_ok']} / {results['num_failed']} / {results['num_cancelled']}"),
            ("duration", f"{results['duration_s']:.2f} s"),
            ("throughput", f"{results['requests_per_s']:.2f} req/s, {results['output_tokens_per_s']:.1f} tok/s")]
    if results["failures"]:
        rows.append(("failures", ", ".join(f"{k}: {v}" for k, v in results["failures"].items())))
    for key, label in (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("itl_ms", "ITL"), ("e2e_ms", "E2E")):
        stats = results[key]
        if stats["count"]:
            rows.append((f"{label} ms (mean / p50 / p95 / p99)",
                         " / ".join(f"{stats[s]:.1f}" for s in ("mean", "p50", "p95", "p99"))))
    if "goodput" in results:
        goodput = results["goodput"]
        rows.append(("goodput", f"{goodput['requests_per_s']:.2f} req/s ({goodput['fraction']:.0%} of requests)"))
    for name, stats in results["server_timing"].items():
        rows.append((f"server {name} ms (mean / p50)", f"{stats['mean_ms']:.1f} / {stats['p50_ms']:.1f}"))
    if not results["dataset"]["exact_lengths"]:
        rows.append(("note", "prompt lengths are approximate (no --tokenizer)"))
    return rows


async def _run_with_progress(settings: LoadSettings, dataset: datasets.Dataset, num_warmup: int,
                             show_progress: bool) -> LoadRun:
    from rich.console import Console
    from rich.progress import Progress

    measured = dataset.prompts[num_warmup:]
    with Progress(console=Console(stderr=True), disable=not show_progress) as progress:
        task = progress.add_task("requests", total=len(measured))

        def advance(_result: RequestResult) -> None:
            progress.advance(task)

        return await run_load(settings, measured, dataset.prompts[:num_warmup], on_result=advance)


def _print_summary(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="bench serve", show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value")
    for label, value in summary_rows(results):
        table.add_row(label, value)
    Console().print(table)


def run(args: argparse.Namespace) -> int:
    """Entry point of `disagg bench serve`: 0 when any request succeeded, 1 when none did, 2 for bad input."""
    try:
        settings = build_settings(args)
        dataset = build_dataset(args, args.num_warmup + args.num_requests)
    except (ValueError, datasets.DatasetError) as exc:
        print(f"disagg bench serve: error: {exc}", file=sys.stderr)
        return 2
    try:
        load_run = asyncio.run(_run_with_progress(settings, dataset, args.num_warmup, not args.no_progress))
    except EndpointError as exc:
        print(f"disagg bench serve: error: {exc}", file=sys.stderr)
        return 1
    results = build_results(settings, dataset, load_run, args.goodput)
    _print_summary(results)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"results written to {args.output}")
    return 0 if results["num_ok"] else 1
