"""`disagg bench kv-tier`: arguments, one run of two-turn conversations (`bench.kv_tier_turns`), its outputs
(results.json, report.md in --out-dir)."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import shlex
import sys
from pathlib import Path

from bench.argtypes import positive_int

DESCRIPTION = """\
Two-turn chat conversations through a router in front of two prefill nodes (round robin) that share a KV
tier: each conversation's own document of --prefix-tokens tokens and a question, then the same with a reply
and a second question, which the router sends to the other prefill node. Reports TTFT per turn (streamed, as
the client sees it), which node served it, and on that node the KV tier's hit blocks and the prompt tokens
vLLM counts as external (from the prefill nodes' /metrics); the summary is the median TTFT of the second
turns (on the other node) over that of the first. Run it against the same cluster with and without
[kv_tier] to see what the tier saves. Exit status: 0 when every turn succeeded, 1 otherwise."""

EPILOG = """\
example:
  disagg bench kv-tier --url http://127.0.0.1:8000 --prefill-url http://127.0.0.1:8100 \\
      --prefill-url http://127.0.0.1:8110 --tokenizer ~/.cache/disagg/models/SmolLM2-135M-Instruct --out-dir t"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="the router")
    parser.add_argument("--prefill-url", action="append", required=True,
                        help="a prefill node's vLLM server, for its /metrics (give both, in any order)")
    parser.add_argument("--tokenizer", required=True, help="the model's folder (its tokenizer builds the documents)")
    parser.add_argument("--model", default=None, help="served model name (default: the router's first)")
    parser.add_argument("--conversations", type=positive_int, default=5, help="conversations (default: 5)")
    parser.add_argument("--prefix-tokens", type=positive_int, default=1500, help="each document's tokens (default: 1500)")
    parser.add_argument("--max-tokens", type=positive_int, default=16, help="greedy tokens per turn (default: 16)")
    parser.add_argument("--think-s", type=float, default=1.0, help="seconds between a conversation's turns (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic documents (default: 0)")
    parser.add_argument("--label", default="", help="what this run is (the report's title)")
    parser.add_argument("--out-dir", type=Path, required=True, help="where results.json and report.md go")


def run(args: argparse.Namespace) -> int:
    import httpx

    from bench import kv_tier_turns
    from bench.datasets import load_tokenizer

    tokenizer = load_tokenizer(str(Path(args.tokenizer).expanduser()))
    model = args.model or httpx.get(f"{args.url.rstrip('/')}/v1/models", timeout=30).json()["data"][0]["id"]
    turns = asyncio.run(kv_tier_turns.run_conversations(
        args.url, args.prefill_url, model, tokenizer, conversations=args.conversations,
        prefix_tokens=args.prefix_tokens, max_tokens=args.max_tokens, think_s=args.think_s, seed=args.seed))
    facts = {"command": shlex.join(["disagg", *sys.argv[1:]]), "date": datetime.date.today().isoformat(),
             "model": model, "conversations": args.conversations, "prefix tokens": args.prefix_tokens,
             "max tokens per turn": args.max_tokens}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "results.json").write_text(json.dumps({**kv_tier_turns.as_json(turns), "facts": facts}, indent=2))
    report = kv_tier_turns.report_markdown(turns, facts, args.label or "KV tier: second turns on another node")
    (args.out_dir / "report.md").write_text(report)
    sys.stdout.write(report)
    return 0 if all(t.ok for t in turns) else 1
