"""`disagg bench multiturn`: a multi-turn chat workload (bench.multiturn) run through one router per routing
policy, side by side: TTFT per turn, which node served each turn, prefix-cache hits per node against the
ideal, KV bytes computed vs loaded; results.json and report.md (bench.multiturn_report).

Targets: `--url POLICY=URL` (a router per policy) with `--prefill-node URL` / `--decode-node URL` (their vLLM
servers, for their /metrics), or `--local`: a cluster of `--prefill-nodes` prefill nodes with KV events and a
decode node (bench.prefix_cluster), its router with the first of `--policies`, one more router per other
policy. Each policy runs its own conversations (seed + 1000 x its position), so no run finds another's prompts
cached. Exit status: 0 when every turn of every run succeeded, 1 otherwise, 2 for bad options.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from bench import multiturn, multiturn_report, prefix_cluster
from bench.argtypes import positive_float, positive_int
from bench.datasets import DatasetError, load_tokenizer
from bench.multiturn_columns import load_extra_columns
from bench.multiturn_run import NodeRef, RunSettings, run_workload
from core.errors import ConfigError
from core.model import default_model_dir
from node.settings import EngineSettings
from router import policies

log = logging.getLogger(__name__)
ROUTER_SERIES = ("disagg_router_prefix_prompt_tokens_total", "disagg_router_prefix_cached_tokens_total")

DESCRIPTION = __doc__ or ""
EPILOG = """\
examples:
  disagg bench multiturn --local --conversations 8 --turns 3 --out-dir docs/measurements/prefix
  disagg bench multiturn --url prefix_aware=http://127.0.0.1:8000 --url round_robin=http://127.0.0.1:8010 \\
      --prefill-node http://10.0.0.11:8100 --prefill-node http://10.0.0.12:8100 --decode-node http://10.0.0.13:8200"""


def _named_url(text: str) -> tuple[str, str]:
    name, sep, url = text.partition("=")
    if not sep or not name.strip() or not url.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"expected POLICY=http://HOST:PORT, got {text!r}")
    return name.strip(), url.rstrip("/")


def _policies_arg(text: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    if not names or any(n not in policies.names() for n in names):
        raise argparse.ArgumentTypeError(f"policies must be from {', '.join(policies.names())}, got {text!r}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_argument_group("targets (given URLs, or --local)")
    target.add_argument("--local", action="store_true", help="start a local cluster with KV events and a router "
                        "per policy (the default without --url)")
    target.add_argument("--policies", type=_policies_arg, default=("prefix_aware", "round_robin"), metavar="LIST",
                        help="with --local: prefill routing policies to compare (default: prefix_aware,round_robin)")
    target.add_argument("--prefill-nodes", type=positive_int, default=2, metavar="N",
                        help="with --local: prefill nodes (default: 2)")
    target.add_argument("--cores", metavar="LIST", help="with --local: a core (or range) per vLLM server, prefill "
                        "nodes then decode, separated by '/', e.g. 0/1/0 (default: one core each, round robin)")
    target.add_argument("--url", type=_named_url, action="append", default=[], metavar="POLICY=URL",
                        help="a router and the name of its prefill policy (repeatable)")
    target.add_argument("--prefill-node", action="append", default=[], metavar="URL",
                        help="a prefill node's vLLM server, for its metrics (repeatable)")
    target.add_argument("--decode-node", action="append", default=[], metavar="URL",
                        help="a decode node's vLLM server, for its metrics (repeatable)")
    target.add_argument("--api-key", metavar="KEY", help="the routers' API key (default: none)")
    target.add_argument("--model", help="model name to send (default: the model folder's name)")
    target.add_argument("--model-dir", type=Path, default=default_model_dir(), metavar="PATH",
                        help="model folder: what --local serves, and the tokenizer for exact lengths and the ideal "
                             f"hit rate (default: {default_model_dir()})")
    work = parser.add_argument_group("workload (bench.multiturn)")
    work.add_argument("--conversations", type=positive_int, default=8, metavar="N",
                      help="conversations, sent one turn at a time (default: 8)")
    work.add_argument("--turns", type=positive_int, default=3, metavar="N", help="user turns each (default: 3)")
    work.add_argument("--system-tokens", type=positive_int, default=256, metavar="TOKENS",
                      help="the shared system prompt (default: 256)")
    work.add_argument("--first-user-tokens", type=positive_int, default=1250, metavar="TOKENS",
                      help="each conversation's first user message (default: 1250: a ~1,500-token first prompt)")
    work.add_argument("--followup-tokens", type=positive_int, default=64, metavar="TOKENS",
                      help="each later user message (default: 64)")
    work.add_argument("--max-tokens", type=positive_int, default=32, metavar="TOKENS",
                      help="answer tokens per turn (default: 32)")
    work.add_argument("--sharegpt-path", metavar="FILE", help="user turns from ShareGPT conversations instead")
    work.add_argument("--seed", type=int, default=0, metavar="N",
                      help="seed of the synthetic conversations (default: 0)")
    work.add_argument("--block-size", type=positive_int, default=128, metavar="TOKENS",
                      help="the nodes' KV block size, for the ideal hit rate (default: 128, vLLM's CPU backend)")
    work.add_argument("--timeout-s", type=positive_float, default=600.0, metavar="SECONDS",
                      help="limit per turn (default: 600)")
    parser.add_argument("--out-dir", type=Path, default=Path("multiturn-results"), metavar="DIR",
                        help="results.json, report.md and, with --local, logs/ (default: ./multiturn-results)")


def _workload(args: argparse.Namespace, tokenizer: Any, run_index: int) -> multiturn.Workload:
    seed = args.seed + 1000 * run_index
    if args.sharegpt_path:
        return multiturn.sharegpt(args.sharegpt_path, args.conversations, args.turns, args.system_tokens, seed,
                                  tokenizer)
    return multiturn.synthetic(args.conversations, args.turns, args.system_tokens, args.first_user_tokens,
                               args.followup_tokens, seed, tokenizer)


def _router_counts(url: str) -> dict[str, float]:
    from bench.kv_metrics import parse

    try:
        values = parse(httpx.get(f"{url}/metrics", timeout=10).text)
    except httpx.HTTPError:
        return {}
    return {name: values.get(name, 0.0) for name in ROUTER_SERIES}


def run_policies(args: argparse.Namespace, targets: list[tuple[str, str]], nodes: list[NodeRef]) -> list[dict]:
    """Each (policy, router URL) with its own conversations; the runs' records for results.json."""
    hf_tokenizer = load_tokenizer(str(args.model_dir)) if (args.model_dir / "tokenizer.json").is_file() else None
    from router import tokenize, tokenizer_files

    ours = tokenize.PromptTokenizer(tokenizer_files.from_folder(args.model_dir)) if hf_tokenizer else None
    runs = []
    for index, (policy, url) in enumerate(targets):
        workload = _workload(args, hf_tokenizer, index)
        settings = RunSettings(url=url, model=args.model or args.model_dir.name, max_tokens=args.max_tokens,
                               timeout_s=args.timeout_s, block_size=args.block_size, api_key=args.api_key)
        log.info("running %s: %d turns on %s", policy, len(workload.order), url)
        before = _router_counts(url)
        turns = asyncio.run(run_workload(settings, workload, nodes, ours))
        after = _router_counts(url)
        records = [t.to_json() for t in turns]
        runs.append({"policy": policy, "url": url, "workload": workload.describe(), "turns": records,
                     "summary": multiturn_report.summarize(records),
                     "router": {k.removeprefix("disagg_router_").removesuffix("_total"): after[k] - before.get(k, 0)
                                for k in after}})
    return runs


def _kv_bytes(cluster: prefix_cluster.PrefixCluster | None, node: NodeRef) -> int | None:
    if cluster is None:
        return None
    resp = httpx.get(f"{cluster.info_url(node)}/info", headers={"Authorization": f"Bearer {cluster.token()}"},
                     timeout=10)
    return resp.json().get("kv_bytes_per_token") if resp.status_code == 200 else None


def _write(args: argparse.Namespace, runs: list[dict], nodes: list[NodeRef],
           cluster: prefix_cluster.PrefixCluster | None) -> dict[str, Any]:
    results = {"benchmark": "multiturn", "model": args.model or args.model_dir.name,
               "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                            if k not in ("func", "api_key")},
               "workload": runs[0]["workload"] if runs else {},
               "nodes": [{"name": n.name, "role": n.role, "url": n.vllm_url, "kv_bytes_per_token": _kv_bytes(cluster, n)}
                         for n in nodes],
               "runs": runs}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out_dir / "report.md").write_text(multiturn_report.render(results))
    return results


def run(args: argparse.Namespace) -> int:
    load_extra_columns()
    local = args.local or not args.url
    try:
        with ExitStack() as stack:
            cluster = None
            if local:
                cores = tuple(args.cores.split("/")) if args.cores else None
                cluster = stack.enter_context(prefix_cluster.running(
                    args.model_dir, (args.out_dir / "logs").resolve(), EngineSettings(kv_events=True),
                    args.prefill_nodes, cores, args.policies[0]))
                targets = [(args.policies[0], cluster.router_url)]
                for policy in args.policies[1:]:
                    targets.append((policy, stack.enter_context(prefix_cluster.extra_router(
                        cluster, "--prefill-policy", policy, name=f"router-{policy}"))))
                nodes = list(cluster.nodes)
            else:
                targets = list(args.url)
                nodes = [NodeRef(f"{role}-{i + 1}", role, url.rstrip("/"))
                         for role, urls in (("prefill", args.prefill_node), ("decode", args.decode_node))
                         for i, url in enumerate(urls)]
            runs = run_policies(args, targets, nodes)
            results = _write(args, runs, nodes, cluster)
    except (ConfigError, DatasetError, prefix_cluster.ClusterFailed) as exc:
        print(f"disagg bench multiturn: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, (ConfigError, DatasetError)) else 1
    print(multiturn_report.render(results))
    print(f"results in {args.out_dir}")
    return 0 if all(r["summary"]["ok"] == r["summary"]["requests"] for r in results["runs"]) else 1
