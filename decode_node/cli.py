"""`disagg decode`: run a decode node."""

from __future__ import annotations

import argparse

from disagg.node_cli import add_node_parser, config_from_args
from disagg.supervisor import run_node


HELP = "run a decode node (vLLM as kv_consumer: pulls KV from the prefill node and generates; also the colocated baseline)"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    add_node_parser(sub, "decode", HELP, run)


def run(args: argparse.Namespace) -> int:
    return run_node(config_from_args(args))
