"""`disagg bench compare`: arguments, the two ways to get targets (given URLs, or local clusters it starts),
the link measurement, and writing results.json, report.md and the PNG plots."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import random
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from bench import compare, datasets, kv_size, linkspeed, load_cli, local_cluster, plots, report
from bench.argtypes import non_negative_int, positive_float, positive_int
from bench.client import EndpointError
from bench.compare import COLOCATED, CompareSettings, Target
from core.errors import ConfigError
from core.model import default_model_dir
from transport import registry

log = logging.getLogger(__name__)


def _lens_arg(text: str) -> tuple[int, ...]:
    return tuple(positive_int(piece.strip()) for piece in text.split(",") if piece.strip())


def _named_url(text: str) -> tuple[str, str]:
    name, sep, url = text.partition("=")
    if not sep or not name.strip() or not url.strip().startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"expected NAME=http://HOST:PORT, got {text!r}")
    if name.strip() == COLOCATED:
        raise argparse.ArgumentTypeError(f"{COLOCATED!r} is the baseline's name; use --colocated-url")
    return name.strip(), url.strip()


def _transports_arg(text: str) -> tuple[str, ...]:
    """Comma-separated names of registered transports with a KV connector (`transport.registry.connectors`)."""
    names = tuple(piece.strip() for piece in text.split(",") if piece.strip())
    known = registry.connectors()
    unknown = [name for name in names if name not in known]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"transports must be from {', '.join(known)}, got {text!r}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """All `bench compare` options, in four groups."""
    target = parser.add_argument_group("targets (given URLs, or --local)")
    target.add_argument("--local", action="store_true",
                        help="start a local cluster per transport (disagg up --local --no-prefix-caching "
                             "--baseline-port) and measure its router and baseline; the default without URLs")
    target.add_argument("--transports", type=_transports_arg, default=("nixl",), metavar="LIST",
                        help="with --local: transports to start clusters for, e.g. nixl,tcp (default: nixl)")
    target.add_argument("--colocated-url", metavar="URL", help="colocated baseline (router or vLLM) base URL")
    target.add_argument("--disagg-url", type=_named_url, action="append", default=[], metavar="NAME=URL",
                        help="disaggregated router per transport, e.g. nixl=http://127.0.0.1:8000 (repeatable)")
    target.add_argument("--decode-metrics-url", type=_named_url, action="append", default=[], metavar="NAME=URL",
                        help="that mode's decode vLLM server, for transfer time and bytes from its /metrics "
                             "(repeatable; without it only the router's Server-Timing KV bytes are known)")
    target.add_argument("--model", help="served model name to send (default: the first id of GET /v1/models)")
    target.add_argument("--model-dir", type=Path, default=default_model_dir(), metavar="PATH",
                        help=f"model folder: KV bytes/token from its config.json, the model --local serves "
                             f"(default: {default_model_dir()})")
    _add_workload_arguments(parser.add_argument_group("workload"))
    _add_kv_arguments(parser.add_argument_group("KV size and link"))
    out = parser.add_argument_group("output")
    out.add_argument("--out-dir", type=Path, default=Path("compare-results"), metavar="DIR",
                     help="report.md, results.json, ttft.png, transfer.png, e2e.png (default: ./compare-results)")
    out.add_argument("--log-dir", type=Path, metavar="DIR",
                     help="with --local: cluster logs (default: OUT_DIR/logs/TRANSPORT)")
    out.add_argument("--ready-timeout-s", type=positive_float, default=600.0, metavar="SECONDS",
                     help="with --local: give up if a cluster is not healthy after this (default: 600)")
    load_cli.add_arguments(parser)  # --load: a request-rate sweep (bench/load_cli.py)


def _add_workload_arguments(work: argparse._ArgumentGroup) -> None:
    work.add_argument("--prompt-lens", type=_lens_arg, default=compare.DEFAULT_PROMPT_LENS, metavar="LIST",
                      help="prompt lengths in tokens, capped at the context minus --output-len "
                           "(default: 128,512,1024,2048,4096)")
    work.add_argument("--output-len", type=positive_int, default=100, metavar="TOKENS",
                      help="output tokens per request, with ignore_eos and temperature 0 (default: 100)")
    work.add_argument("--num-requests", type=positive_int, default=3, metavar="N",
                      help="sequential requests per mode and prompt length (default: 3)")
    work.add_argument("--num-warmup", type=non_negative_int, default=1, metavar="N",
                      help="warm-up requests per mode, not counted (default: 1)")
    work.add_argument("--tokenizer", metavar="PATH",
                      help="tokenizer folder for exact prompt lengths (default: --model-dir)")
    work.add_argument("--seed", type=int, metavar="N",
                      help="prompt seed (default: random, recorded in results.json, so a rerun against "
                           "servers with a prefix cache does not hit it)")
    work.add_argument("--timeout-s", type=positive_float, default=600.0, metavar="SECONDS",
                      help="limit per request (default: 600)")
    work.add_argument("--max-duration-s", type=positive_float, default=3600.0, metavar="SECONDS",
                      help="limit for all requests of the run, cluster start-up not counted; later "
                           "lengths are skipped (default: 3600)")


def _add_kv_arguments(kv: argparse._ArgumentGroup) -> None:
    kv.add_argument("--kv-bytes-per-token", type=positive_int, metavar="BYTES",
                    help="KV bytes per token (default: from --model-dir's config.json)")
    kv.add_argument("--block-size-tokens", type=positive_int, default=128, metavar="TOKENS",
                    help="KV block size of the serving engine (default: 128, vLLM's CPU backend)")
    kv.add_argument("--link-host", default="127.0.0.1", metavar="ADDR",
                    help="local address of the KV link to measure with a TCP stream (default: 127.0.0.1)")
    kv.add_argument("--link-mib", type=positive_int, default=128, metavar="MIB",
                    help="bytes streamed per link measurement, MiB (default: 128)")
    kv.add_argument("--link-bandwidth-gb-s", type=positive_float, metavar="GB_S",
                    help="use this link bandwidth, in GB/s (10^9 bytes per second), instead of measuring it")
    kv.add_argument("--max-model-len", type=positive_int, metavar="TOKENS",
                    help="with --local: the clusters' context (default: longest prompt + output, at most "
                         "the model's max_position_embeddings)")


@dataclass
class Measurement:
    """The modes measured so far, under one request-time budget for the whole run."""

    settings: CompareSettings
    tokenizer: datasets.Tokenizer | None
    remaining_s: float
    max_model_len: int | None = None
    modes: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    not_measured: list[str] = field(default_factory=list)  # modes that could not be measured, and why

    def measure(self, target: Target) -> None:
        """Run the workload on `target`; a target that cannot be benchmarked becomes a note."""
        started_s = time.perf_counter()
        try:
            self.modes.append(asyncio.run(compare.run_target(target, self.settings, self.tokenizer,
                                                             started_s + self.remaining_s, len(self.modes))))
        except EndpointError as exc:
            log.error("%s not measured: %s", target.name, exc)
            self.not_measured.append(f"{target.name}: {exc}")
        finally:
            self.remaining_s -= time.perf_counter() - started_s


def given_targets(args: argparse.Namespace) -> list[Target]:
    """Targets from --colocated-url, --disagg-url and --decode-metrics-url; raises ConfigError."""
    disagg = dict(args.disagg_url)
    metrics = dict(args.decode_metrics_url)
    if len(disagg) != len(args.disagg_url):
        raise ConfigError("each --disagg-url NAME may be given once")
    stray = sorted(set(metrics) - set(disagg))
    if stray:
        raise ConfigError(f"--decode-metrics-url for {', '.join(stray)} without a matching --disagg-url")
    targets = [Target(COLOCATED, args.colocated_url)] if args.colocated_url else []
    return targets + [Target(name, url, metrics.get(name)) for name, url in disagg.items()]


def local_max_model_len(args: argparse.Namespace) -> int:
    """The context to start local clusters with: enough for the longest prompt plus the output."""
    if args.max_model_len:
        return args.max_model_len
    try:
        config = json.loads((args.model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {args.model_dir / 'config.json'}: {exc}") from None
    wanted = max(args.prompt_lens) + args.output_len
    limit = config.get("max_position_embeddings")
    return min(wanted, limit) if isinstance(limit, int) and limit > 0 else wanted


def measure_link(args: argparse.Namespace) -> dict[str, Any]:
    if args.link_bandwidth_gb_s:
        return {"gb_per_s": args.link_bandwidth_gb_s, "method": "given with --link-bandwidth-gb-s"}
    try:
        return linkspeed.measure_tcp_bandwidth(args.link_host, args.link_mib * linkspeed.MIB).to_json()
    except (linkspeed.LinkSpeedError, OSError) as exc:
        log.warning("link bandwidth not measured: %s", exc)
        return {"gb_per_s": None, "method": f"measurement failed: {exc}"}


def _measurement(args: argparse.Namespace, max_model_len: int | None, seed: int,
                 tokenizer: datasets.Tokenizer | None) -> Measurement:
    settings = CompareSettings(
        prompt_lens=compare.cap_prompt_lens(args.prompt_lens, max_model_len, args.output_len),
        output_len=args.output_len, num_requests=args.num_requests, num_warmup=args.num_warmup, seed=seed,
        timeout_s=args.timeout_s, model=args.model)
    return Measurement(settings, tokenizer, args.max_duration_s, max_model_len)


def run_local(args: argparse.Namespace, seed: int, tokenizer: datasets.Tokenizer | None) -> Measurement:
    """Start one cluster per transport in turn; measure disagg in each, colocated in the first that starts.

    The colocated baseline is the decode node serving alone. The `tcp` cluster goes first when there is one:
    in a `nixl` cluster on a CPU host, NIXL's UCX progress thread busy-polls the node's core and would slow
    the baseline too.
    """
    run = _measurement(args, local_max_model_len(args), seed, tokenizer)
    run.notes.append("local clusters run with prefix caching off")
    for transport in sorted(args.transports, key=lambda name: name != "tcp"):
        log_dir = args.log_dir / transport if args.log_dir else args.out_dir / "logs" / transport
        try:
            with local_cluster.local_cluster(transport, args.model_dir, run.max_model_len or 0,
                                             log_dir.resolve(), args.ready_timeout_s) as cluster:
                if not any(mode["name"] == COLOCATED for mode in run.modes):
                    run.notes.append(f"colocated baseline: the decode node of the {transport} cluster alone")
                    run.measure(Target(COLOCATED, cluster.baseline_url))
                run.measure(Target(transport, cluster.router_url, cluster.decode_vllm_url))
        except local_cluster.ClusterFailed as exc:
            log.error("the %s cluster did not start: %s", transport, exc)
            run.not_measured.append(f"{transport}: its cluster did not start (logs in {log_dir})")
    return run


def run_given(args: argparse.Namespace, seed: int, tokenizer: datasets.Tokenizer | None) -> Measurement:
    """Measure the given URLs; prompt lengths capped by the smallest context the servers report."""
    targets = given_targets(args)
    contexts = [length for length in (asyncio.run(compare.max_model_len_of(t.url)) for t in targets) if length]
    run = _measurement(args, min(contexts) if contexts else None, seed, tokenizer)
    for target in targets:
        run.measure(target)
    return run


def build_results(args: argparse.Namespace, run: Measurement, link: dict[str, Any]) -> dict[str, Any]:
    """results.json: settings, KV facts, link, notes, and every mode's per-length records."""
    kv_bytes_per_token = args.kv_bytes_per_token
    if kv_bytes_per_token is None:
        kv_bytes_per_token = kv_size.load_config_geometry(args.model_dir).kv_bytes_per_token
    exact = all(entry.get("exact_lengths") for mode in run.modes for entry in mode["lengths"])
    return {
        "benchmark": "compare",
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": next((mode["model"] for mode in run.modes), args.model),
        "settings": {**asdict(run.settings), "prompt_lens": list(run.settings.prompt_lens),
                     "requested_prompt_lens": list(args.prompt_lens), "exact_lengths": exact,
                     "mode": "local" if _is_local(args) else "given-urls"},
        "kv_bytes_per_token": kv_bytes_per_token, "block_size_tokens": args.block_size_tokens,
        "max_model_len": run.max_model_len, "link": link, "modes": run.modes, "notes": run.notes,
        "not_measured": run.not_measured,
    }


def write_outputs(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """results.json, report.md and the three PNGs in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path, report_path = out_dir / "results.json", out_dir / "report.md"
    results_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    report_path.write_text(report.render_markdown(results), encoding="utf-8")
    return [results_path, report_path, *plots.write_plots(results, out_dir).values()]


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM unwinds like Ctrl-C, so that a local cluster is stopped on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _is_local(args: argparse.Namespace) -> bool:
    return args.local or not (args.colocated_url or args.disagg_url)


def run(args: argparse.Namespace) -> int:
    """Entry point of `disagg bench compare`: 0 when every mode answered, 1 when one did not, 2 for bad input."""
    if args.local and (args.colocated_url or args.disagg_url):
        print("disagg bench compare: error: --local and given URLs exclude each other", file=sys.stderr)
        return 2
    if args.load:
        if args.colocated_url or args.disagg_url:
            print("disagg bench compare --load: error: name endpoints with --setup-url NAME=URL", file=sys.stderr)
            return 2
        with _sigterm_as_interrupt():
            return load_cli.run(args)
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    try:
        tokenizer = datasets.load_tokenizer(str(args.tokenizer or args.model_dir))
        link = measure_link(args)
        runner = run_local if _is_local(args) else run_given
        with _sigterm_as_interrupt():
            measured = runner(args, seed, tokenizer)
        results = build_results(args, measured, link)
    except (ConfigError, datasets.DatasetError, ValueError) as exc:
        print(f"disagg bench compare: error: {exc}", file=sys.stderr)
        return 2
    for path in write_outputs(results, args.out_dir):
        print(f"wrote {path}")
    modes = measured.modes
    ok = all(mode["lengths"] and all(entry["num_ok"] for entry in mode["lengths"]) for mode in modes)
    return 0 if modes and ok and not measured.not_measured else 1
