"""`disagg router`: the OpenAI-compatible front door."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from core.cluster_token import CLUSTER_TOKEN_ENV, read_token
from router import routing_cli
from router.config import RouterConfig

# How long the router keeps a client's idle connection open: longer than HTTP clients keep theirs in a pool
# (httpx and the openai SDK 5 s, aiohttp 15 s), so a client rarely reuses one the router is just closing
# (uvicorn's default, 5 s, races them); proxies do the same (nginx's keepalive_timeout: 75 s).
CLIENT_KEEPALIVE_S = 75


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "router",
        help="run the OpenAI-compatible router in front of prefill and decode nodes",
        description=(
            "Serve /v1/completions, /v1/chat/completions, /v1/models, /health and /metrics. In disagg "
            "mode each request is prefilled on a prefill node, its KV shipped to a decode node, which "
            "generates. In colocated mode each request goes to one node that does both (the baseline). "
            "A node URL is a disagg node (disagg prefill/decode) or a plain vLLM server. With --api-key, "
            "every /v1 route needs 'Authorization: Bearer KEY' (else 401); /health and /metrics stay open, "
            "so bind them to a trusted network or keep the router behind a proxy."
        ),
    )
    p.add_argument("--mode", choices=["disagg", "colocated"], default="disagg",
                   help="disagg: prefill node -> decode node; colocated: decode node alone (default: disagg)")
    p.add_argument("--prefill", action="append", default=[], metavar="URL",
                   help="prefill node URL: a disagg node's info port (its /info names its vLLM server), e.g. "
                        "http://127.0.0.1:8101, or a plain vLLM server's URL (repeatable: a failed prefill is "
                        "retried on another)")
    p.add_argument("--decode", action="append", default=[], metavar="URL",
                   help="decode node URL: a disagg node's info port, e.g. http://127.0.0.1:8201, or a plain vLLM "
                        "server's URL (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    p.add_argument("--request-timeout-s", type=float, default=600.0,
                   help="deadline of a request, from arrival to its last byte, queueing included: past it the "
                        "client gets 504 (or, mid-stream, an SSE error event) and the node calls are cancelled "
                        "(default: 600)")
    p.add_argument("--health-interval-s", type=float, default=2.0,
                   help="seconds between node health checks (default: 2)")
    _add_limit_options(p)
    routing_cli.add_options(p)
    p.set_defaults(func=run)


def _add_limit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024,
                   help="largest request body accepted, else 413, refused before it is read "
                        "(default: 4 MiB, about 500k prompt tokens as JSON token ids)")
    p.add_argument("--max-inflight", type=int, default=256,
                   help="requests served at once; more wait in the queue (default: 256, vLLM's default "
                        "batch of sequences)")
    p.add_argument("--max-queue", type=int, default=512,
                   help="requests waiting for a slot; beyond that 429 with Retry-After (default: 512)")
    p.add_argument("--no-colocated-fallback", dest="colocated_fallback", action="store_false",
                   help="in disagg mode, answer 502/503 when no prefill node can serve instead of letting "
                        "the decode node prefill the request itself (counted in disagg_router_fallbacks_total)")
    p.add_argument("--api-key", default=os.environ.get("DISAGG_API_KEY"), metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on /v1 routes (default: $DISAGG_API_KEY; "
                        "none: no key needed). Prefer the environment variable: a command line is visible "
                        "to every user of the host")
    p.add_argument("--cluster-token-file", type=Path, default=None, metavar="PATH",
                   help="file holding the cluster token the nodes require (sent as 'Authorization: Bearer' with "
                        f"every node call; default: ${CLUSTER_TOKEN_ENV}; none: nodes are open)")


def config_from_args(args: argparse.Namespace) -> RouterConfig:
    return RouterConfig(
        mode=args.mode,
        prefill_urls=tuple(args.prefill),
        decode_urls=tuple(args.decode),
        host=args.host,
        port=args.port,
        request_timeout_s=args.request_timeout_s,
        health_interval_s=args.health_interval_s,
        max_body_bytes=args.max_body_bytes,
        max_inflight=args.max_inflight,
        max_queue=args.max_queue,
        colocated_fallback=args.colocated_fallback,
        api_key=args.api_key or None,
        cluster_token=read_token(args.cluster_token_file),
        **routing_cli.config_values(args),
    )


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from router.app import create_app

    config = config_from_args(args)
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level="warning",
                timeout_keep_alive=CLIENT_KEEPALIVE_S)
    return 0
