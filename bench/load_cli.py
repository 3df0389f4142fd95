"""`disagg bench compare --load`: a request-rate sweep with Poisson arrivals and mixed prompt and output lengths
against each setup (a disaggregated cluster and colocated ones on the same cores, `bench.load_setups`, started
one at a time; or given URLs), goodput against TTFT and TPOT SLOs, written to a folder as results.json,
report.md, goodput.png and tpot.png (`bench.load_report`).

Default SLOs, for SmolLM2-135M fp32 on one core per vLLM server of this 2-core CPU host (decode about 15
tokens/s alone, prefill about 250-320 tokens/s): TPOT ≤ 150 ms, about twice a lone stream's 66 ms and above the
80-100 ms of a few streams batched, but below what a stream suffers when a 1,000-1,500-token prompt prefills
beside it (4-5 s of stall over 20-60 tokens: +70-250 ms per token); TTFT ≤ 8,000 ms, 1.5x the 5-6 s a
1,536-token prompt takes to prefill alone, so the longest prompts of the mix can meet it unloaded.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import random
import shlex
import sys
from pathlib import Path
from typing import Any

from bench import datasets, load_report, load_setups, load_workload
from bench.argtypes import non_negative_int, positive_float, positive_int
from bench.load_sweep import SweepSettings, run_setup_sync
from core.errors import ConfigError

log = logging.getLogger(__name__)
DEFAULT_RATES = (0.25, 0.5, 0.75, 1.0)
DEFAULT_SLO_MS = {"ttft_ms": 8000.0, "tpot_ms": 150.0}
DEFAULT_MAX_MODEL_LEN = 2048
SLO_NOTE = ("Chosen for SmolLM2-135M fp32 on one core per server of a 2-core CPU host: TPOT 150 ms is about twice "
            "a lone stream's (~66 ms) and above a few batched streams' (80-100 ms), below what a stream suffers "
            "while a 1,000-1,500-token prompt prefills beside it; TTFT 8 s is 1.5x the time the longest prompt of "
            "the mix (1,536 tokens) takes to prefill alone.")


def _rates(text: str) -> tuple[float, ...]:
    return tuple(sorted({positive_float(piece.strip()) for piece in text.split(",") if piece.strip()}))


def _names(text: str) -> tuple[str, ...]:
    names = tuple(piece.strip() for piece in text.split(",") if piece.strip())
    unknown = [name for name in names if name not in load_setups.SETUPS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"setups must be from {', '.join(load_setups.SETUPS)}, got {text!r}")
    return names


def _named_url(text: str) -> tuple[str, str]:
    name, sep, url = text.partition("=")
    if not sep or not name.strip() or not url.strip().startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"expected NAME=http://HOST:PORT, got {text!r}")
    return name.strip(), url.strip().rstrip("/")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("--load: a request-rate sweep against setups on the same cores")
    g.add_argument("--load", action="store_true",
                   help="instead of one request at a time per prompt length: Poisson arrivals at each --rates, "
                        "mixed lengths (--load-dataset), goodput against --slo-ttft-ms/--slo-tpot-ms")
    g.add_argument("--setups", type=_names, default=load_setups.DEFAULT_SETUPS, metavar="LIST",
                   help=f"local setups to start in turn, from {', '.join(load_setups.SETUPS)} "
                        f"(default: {','.join(load_setups.DEFAULT_SETUPS)}; see bench/load_setups.py)")
    g.add_argument("--setup-url", type=_named_url, action="append", default=[], metavar="NAME=URL",
                   help="measure this running endpoint as setup NAME instead of starting any (repeatable; a NAME "
                        "starting with disagg is compared with those starting with colocated)")
    g.add_argument("--rates", type=_rates, default=DEFAULT_RATES, metavar="LIST",
                   help=f"request rates per second (default: {','.join(map(str, DEFAULT_RATES))})")
    g.add_argument("--requests-per-rate", type=positive_int, default=24, metavar="N",
                   help="requests sent at each rate (default: 24)")
    g.add_argument("--load-warmup", type=non_negative_int, default=2, metavar="N",
                   help="warm-up requests per setup, not counted (default: 2)")
    g.add_argument("--load-dataset", choices=load_workload.DATASETS, default=load_workload.DEFAULT_MIX,
                   help="prompt/output length mix (bench/load_workload.py) or a ShareGPT file "
                        f"(default: {load_workload.DEFAULT_MIX})")
    g.add_argument("--sharegpt-path", type=Path, metavar="FILE", help="with --load-dataset sharegpt: the file")
    g.add_argument("--max-output-tokens", type=positive_int, default=64, metavar="N",
                   help="with --load-dataset sharegpt: cap on a reply's length (default: 64)")
    g.add_argument("--slo-ttft-ms", type=positive_float, default=DEFAULT_SLO_MS["ttft_ms"], metavar="MS",
                   help=f"TTFT SLO (default: {DEFAULT_SLO_MS['ttft_ms']:.0f}; see bench/load_cli.py)")
    g.add_argument("--slo-tpot-ms", type=positive_float, default=DEFAULT_SLO_MS["tpot_ms"], metavar="MS",
                   help=f"TPOT SLO (default: {DEFAULT_SLO_MS['tpot_ms']:.0f})")


def workload(args: argparse.Namespace, count: int, seed: int, tokenizer: datasets.Tokenizer | None,
             max_prompt_tokens: int) -> load_workload.Workload:
    if args.load_dataset == load_workload.SHAREGPT:
        if args.sharegpt_path is None:
            raise ConfigError("--load-dataset sharegpt needs --sharegpt-path FILE")
        return load_workload.sharegpt(args.sharegpt_path, count, seed, tokenizer, args.max_output_tokens,
                                      max_prompt_tokens)
    return load_workload.mix(args.load_dataset, count, seed, tokenizer, max_prompt_tokens)


def _tokenizer(args: argparse.Namespace) -> datasets.Tokenizer | None:
    """--tokenizer, else --model-dir's tokenizer, else None (approximate lengths, logged)."""
    try:
        return datasets.load_tokenizer(str(args.tokenizer or args.model_dir))
    except datasets.DatasetError as exc:
        if args.tokenizer:
            raise
        log.warning("no tokenizer (%s): prompt lengths are approximate (words)", exc)
        return None


def _targets(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """(setup name, URL or None: start it) in order."""
    if args.setup_url:
        return [(name, url) for name, url in args.setup_url]
    return [(name, None) for name in args.setups]


def _measure(args: argparse.Namespace, name: str, url: str | None, settings: SweepSettings, workloads: list,
             warmup: load_workload.Workload, max_model_len: int) -> dict[str, Any]:
    if url is not None:
        return {**run_setup_sync(name, url, settings, workloads, warmup), "description": "given URL"}
    setup = load_setups.SETUPS[name]
    log_dir = (args.log_dir or args.out_dir / "logs") / name
    with load_setups.started(setup, args.model_dir, max_model_len, log_dir.resolve(), args.ready_timeout_s) as url:
        return {**run_setup_sync(name, url, settings, workloads, warmup), "description": setup.description}


def run(args: argparse.Namespace) -> int:
    """`bench compare --load`: 0 when every setup was measured, 1 when one was not, 2 for bad input."""
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    max_model_len = args.max_model_len or DEFAULT_MAX_MODEL_LEN
    max_prompt = max_model_len - max(load_workload.DOC.output_tokens[1], load_workload.CHAT.output_tokens[1],
                                     args.max_output_tokens)
    try:
        settings = SweepSettings(args.rates, args.requests_per_rate, {"ttft_ms": args.slo_ttft_ms,
                                 "tpot_ms": args.slo_tpot_ms}, args.load_warmup, seed, args.timeout_s, args.model)
        tokenizer = _tokenizer(args)
        workloads = [workload(args, settings.requests_per_rate, seed + 1000 * (i + 1), tokenizer, max_prompt)
                     for i in range(len(settings.rates_per_s))]
        warmup = workload(args, max(settings.num_warmup, 1), seed, tokenizer, max_prompt)
    except (ConfigError, datasets.DatasetError, ValueError) as exc:
        print(f"disagg bench compare --load: error: {exc}", file=sys.stderr)
        return 2
    results = {"benchmark": "compare-load", "model": args.model or args.model_dir.name,
               "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "command": shlex.join(["disagg", *sys.argv[1:]]), "workload": workloads[0].description,
               "settings": {**settings.__dict__, "slo_ms": dict(settings.slo_ms), "max_model_len": max_model_len,
                            "rates_per_s": list(settings.rates_per_s)},
               "slo_note": SLO_NOTE if settings.slo_ms == DEFAULT_SLO_MS else "", "setups": [], "not_measured": [],
               "notes": ["Local setups run with prefix caching off, one at a time, each started and stopped by the "
                         "bench (bench/load_setups.py)."]}
    for name, url in _targets(args):
        try:
            results["setups"].append(_measure(args, name, url, settings, workloads, warmup, max_model_len))
        except load_setups.ClusterFailed as exc:
            log.error("%s did not start: %s", name, exc)
            results["not_measured"].append(f"{name}: its cluster did not start")
        _write(results, args.out_dir)
    return 0 if results["setups"] and not results["not_measured"] else 1


def _write(results: dict[str, Any], out_dir: Path) -> None:
    """results.json and the report, rewritten after each setup (a run cut short keeps what it measured)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    for path in load_report.write(results, out_dir):
        log.info("wrote %s", path)
