"""`disagg router`: the OpenAI-compatible front door."""

from __future__ import annotations

import argparse

from router.config import RouterConfig


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "router",
        help="run the OpenAI-compatible router in front of prefill and decode nodes",
        description=(
            "Serve /v1/completions, /v1/chat/completions, /v1/models, /health and /metrics. In disagg "
            "mode each request is prefilled on a prefill node, its KV shipped to a decode node, which "
            "generates. In colocated mode each request goes to one node that does both (the baseline). "
            "A node URL is a disagg node (disagg prefill/decode) or a plain vLLM server."
        ),
    )
    p.add_argument("--mode", choices=["disagg", "colocated"], default="disagg",
                   help="disagg: prefill node -> decode node; colocated: decode node alone (default: disagg)")
    p.add_argument("--prefill", action="append", default=[], metavar="URL",
                   help="prefill node URL, e.g. http://127.0.0.1:8101 (repeatable)")
    p.add_argument("--decode", action="append", default=[], metavar="URL",
                   help="decode node URL, e.g. http://127.0.0.1:8201 (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    p.add_argument("--request-timeout-s", type=float, default=600.0,
                   help="longest wait for a node's answer, per call (default: 600)")
    p.add_argument("--health-interval-s", type=float, default=2.0,
                   help="seconds between node health checks (default: 2)")
    p.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024,
                   help="largest request body accepted, else 413 (default: 4 MiB)")
    p.set_defaults(func=run)


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
    )


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from router.app import create_app

    config = config_from_args(args)
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level="warning")
    return 0
