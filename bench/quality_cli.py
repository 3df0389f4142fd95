"""`disagg bench quality`: arguments, one run over the fixed prompt set (`bench.quality`), and its outputs
(results.json, report.md, quality.png in --out-dir). Progress goes to stderr as it runs."""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

from bench.argtypes import positive_int
from core.errors import ConfigError

DESCRIPTION = """\
Runs the fixed prompt set (60 prompts at five lengths, bench/quality_prompts.py) colocated (the decode node
alone) and disaggregated in each KV wire dtype (the prefill node's KV pulled by the decode node over the tcp
transport as native, bf16, fp16 or int8, named per request in kv_transfer_params), greedy, and reports the
share of outputs token-identical to colocated, the first divergence, and the mean |Δ log p| of the chosen
tokens. Talks to the two vLLM servers directly (vLLM's P/D protocol), so both must run the tcp transport.
Exit status: 0 when every request succeeded, 1 when one failed, 2 for bad options."""

EPILOG = """\
examples:
  disagg bench quality --prefill-url http://127.0.0.1:8100 --decode-url http://127.0.0.1:8200 --out-dir q
  disagg bench quality --prefill-url ... --decode-url ... --wire-dtypes native,int8 --num-prompts 10 \\
      --cluster-token-file ~/.config/disagg/cluster-token"""


def _wire_list(text: str) -> list[str]:
    from transport.tcp.wire_dtype import WIRE_DTYPES

    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in WIRE_DTYPES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown wire dtypes {unknown}; known: {', '.join(WIRE_DTYPES)}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prefill-url", required=True, help="the prefill node's vLLM server")
    parser.add_argument("--decode-url", required=True, help="the decode node's vLLM server")
    parser.add_argument("--model", default=None, help="served model name (default: the decode node's first)")
    parser.add_argument("--wire-dtypes", type=_wire_list, default=["native", "bf16", "fp16", "int8"],
                        help="comma-separated wire dtypes to compare (default native,bf16,fp16,int8)")
    parser.add_argument("--num-prompts", type=positive_int, default=60,
                        help="first N prompts of the set, at most 60 (default: 60)")
    parser.add_argument("--max-tokens", type=positive_int, default=32, help="greedy tokens per prompt (default 32)")
    parser.add_argument("--cluster-token-file", type=Path, default=None,
                        help="the cluster token (default: $DISAGG_CLUSTER_TOKEN; none: open nodes)")
    parser.add_argument("--out-dir", type=Path, required=True, help="where results.json, report.md, quality.png go")


def run(args: argparse.Namespace) -> int:
    import httpx
    from rich.console import Console

    from bench import quality, quality_report
    from bench.quality_prompts import SEED, prompt_set
    from core.cluster_token import read_token

    try:
        prompts = prompt_set(args.num_prompts)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    token = read_token(args.cluster_token_file)
    model = args.model or _served_model(httpx, args.decode_url, token)
    nodes = quality.Nodes(args.prefill_url.rstrip("/"), args.decode_url.rstrip("/"), model, token)
    console = Console(stderr=True)

    def progress(done: int, total: int, what: str) -> None:
        console.print(f"[{done:>3}/{total}] {what}", highlight=False)

    try:
        results = quality.run_prompts(nodes, prompts, args.wire_dtypes, args.max_tokens, progress)
    except (quality.QualityError, httpx.HTTPError) as exc:
        console.print(f"bench quality failed: {exc}")
        return 1
    settings = {"model": model, "num_prompts": len(prompts), "max_tokens": args.max_tokens, "seed": SEED,
                "wire_dtypes": args.wire_dtypes, "prefill_url": nodes.prefill_url, "decode_url": nodes.decode_url,
                "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "command": "disagg " + " ".join(shlex.quote(a) for a in sys.argv[1:])}
    data = quality_report.results_json(results, args.wire_dtypes, settings)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "results.json").write_text(json.dumps(data, indent=1) + "\n")
    (args.out_dir / "report.md").write_text(quality_report.render_markdown(data))
    quality_report.plot(data, args.out_dir / "quality.png")
    for line in quality_report.render_markdown(data).splitlines()[4:4 + 2 + len(args.wire_dtypes)]:
        print(line)
    return 0


def _served_model(httpx, url: str, token: str | None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        return httpx.get(f"{url.rstrip('/')}/v1/models", headers=headers, timeout=10).json()["data"][0]["id"]
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"cannot read the served model from {url}: {exc} (give --model)") from None
