"""`disagg router`'s routing options: a policy per role, the prefix_aware policy's settings, the node-load
scrape interval, conditional disaggregation and its cost model (router.policies, router.prefix_policy,
router.load, router.decider)."""

from __future__ import annotations

import argparse
from typing import Any

from router import load as _registers_load_aware  # noqa: F401
from router import policies
from router.config import PREFIX_MAX_BLOCKS_PER_NODE, PrefixSettings
from router.decider import DISAGG_POLICIES, DeciderSettings

_DEFAULTS = DeciderSettings()


def add_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("routing (router.policies, router.load, router.decider)")
    for role in ("prefill", "decode"):
        g.add_argument(f"--{role}-policy", choices=policies.names(), default="round_robin",
                       help=f"how a {role} node is chosen among the healthy ones"
                            + (" (also the node of a colocated request)" if role == "decode" else "") + ": round_robin; load_aware (the least outstanding work from each "
                            "node's vLLM metrics and the router's own calls in flight); prefix_aware (the node "
                            "whose prefix cache holds the longest prefix of the prompt, weighed against its load; "
                            "the nodes must publish KV events: --kv-events) (default: round_robin)")
    g.add_argument("--tokenizer", metavar="MODEL_DIR",
                   help="prefix_aware: a local model folder with tokenizer.json (and its chat template), to "
                        "tokenize prompts with (default: fetched from a disagg node; without one, requests "
                        "are placed by load alone)")
    g.add_argument("--prefix-load-weight", type=float, default=1.0, metavar="W",
                   help="prefix_aware: what one request in flight on a node costs, in typical requests' "
                        "prefill work: cost = uncached prompt tokens + W x outstanding x mean uncached tokens "
                        "(default: 1; 0 ignores load)")
    g.add_argument("--prefix-index-max-blocks", type=int, default=PREFIX_MAX_BLOCKS_PER_NODE, metavar="N",
                   help=f"prefix_aware: block hashes remembered per node (default: {PREFIX_MAX_BLOCKS_PER_NODE})")
    g.add_argument("--load-interval-s", type=float, default=1.0,
                   help="seconds between scrapes of each node's vLLM /metrics, when load_aware or the conditional "
                        "decider needs them (default: 1)")
    g.add_argument("--disagg-policy", choices=DISAGG_POLICIES, default=_DEFAULTS.policy,
                   help="disagg mode: always prefill on a prefill node, never (the decode node serves each request "
                        "as colocated), or conditional: per request, by the cost model of router/decider.py "
                        f"(default: {_DEFAULTS.policy})")
    g.add_argument("--prefill-tokens-per-s", type=float, default=_DEFAULTS.prefill_tokens_per_s,
                   help="conditional: prefill rate assumed until the prefill nodes' own is measured "
                        f"(default: {_DEFAULTS.prefill_tokens_per_s:g})")
    g.add_argument("--kv-link-gbit-per-s", type=float, default=None,
                   help="conditional: the KV link's bandwidth (default: measured from the decode nodes' pulls)")
    g.add_argument("--remote-overhead-s", type=float, default=_DEFAULTS.remote_overhead_s,
                   help="conditional: fixed cost of the remote path, a second node call "
                        f"(default: {_DEFAULTS.remote_overhead_s:g})")
    g.add_argument("--max-prefill-wait-s", type=float, default=_DEFAULTS.max_prefill_wait_s,
                   help="conditional: prefill locally when the least busy prefill node's queue would keep this "
                        "request waiting longer than this many seconds (its queued prompt tokens over "
                        "--prefill-tokens-per-s) "
                        f"(default: {_DEFAULTS.max_prefill_wait_s:g})")


def config_values(args: argparse.Namespace) -> dict[str, Any]:
    """The RouterConfig fields these options set."""
    decider = DeciderSettings(policy=args.disagg_policy, prefill_tokens_per_s=args.prefill_tokens_per_s,
                              kv_link_gbit_per_s=args.kv_link_gbit_per_s, remote_overhead_s=args.remote_overhead_s,
                              max_prefill_wait_s=args.max_prefill_wait_s)
    prefix = PrefixSettings(tokenizer=args.tokenizer, load_weight=args.prefix_load_weight,
                            max_blocks_per_node=args.prefix_index_max_blocks)
    return {"prefill_policy": args.prefill_policy, "decode_policy": args.decode_policy,
            "load_interval_s": args.load_interval_s, "decider": decider, "prefix": prefix}
