"""`disagg decode`: run a decode node."""

from __future__ import annotations

import argparse

from node.cli import add_node_parser, settings_from_args
from decode_node.role import ROLE


def add_parsers(sub: argparse._SubParsersAction) -> None:
    add_node_parser(sub, ROLE).set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from node.supervisor import run_node

    return run_node(settings_from_args(ROLE, args), ROLE)
