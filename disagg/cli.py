"""The one command-line entry point: `disagg SUBCOMMAND ...`.

Each package contributes its subcommands through an `add_parsers(subparsers)` function that
registers argparse subparsers and sets `func=callable(args) -> int` on them. This module only
collects them, sets up logging and dispatches.
"""

from __future__ import annotations

import argparse
import logging
import sys

from core.errors import ConfigError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="disagg",
        description=(
            "Disaggregated prefill/decode serving on vLLM: a prefill node computes the KV cache, "
            "ships it over NIXL or TCP to a decode node, and an OpenAI-compatible router ties them together."
        ),
    )
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), help="logging level (default: INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Imported here so that `disagg --help` stays fast and optional deps stay optional.
    from disagg import model_cli
    from prefill_node import cli as prefill_cli
    from decode_node import cli as decode_cli
    from router import cli as router_cli
    from deploy import cli as deploy_cli

    for module in (model_cli, prefill_cli, decode_cli, router_cli, deploy_cli):
        module.add_parsers(sub)
    _add_optional(sub, "bench.cli")
    _add_optional(sub, "transport.cli")
    return parser


def _add_optional(sub: argparse._SubParsersAction, module_name: str) -> None:
    """Packages still being built register themselves only when they are present."""
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        return
    module.add_parsers(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        logging.getLogger("disagg").error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
