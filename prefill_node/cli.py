"""`disagg prefill`: run a prefill node."""

from __future__ import annotations

import argparse

from disagg.node_cli import add_node_parser, config_from_args
from disagg.supervisor import run_node


HELP = "run a prefill node (vLLM as kv_producer: computes KV and keeps it until the decode node pulls it)"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    add_node_parser(sub, "prefill", HELP, run)


def run(args: argparse.Namespace) -> int:
    return run_node(config_from_args(args))
