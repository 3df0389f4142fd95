"""`disagg prefill` / `disagg decode`: one parser per role, its flags generated from the node settings.

Either flags (`--port 8100 --transport tcp ...`, each one a field of `node.settings`) or the whole settings
as JSON (`--settings JSON`, what `disagg up` hands a node); never both.
"""

from __future__ import annotations

import argparse

from core.errors import ConfigError
from core.settings_flags import add_flags, given_values, pairs_to_dict
from node.role import NodeRole
from node.settings import EngineSettings, NodeSettings

_ENGINE_FLAGS = "_engine_flags"
_NODE_FLAGS = "_node_flags"


def add_node_parser(sub: argparse._SubParsersAction, role: NodeRole) -> argparse.ArgumentParser:
    """The `disagg ROLE` subcommand: flags for every setting, or `--settings JSON`."""
    p = sub.add_parser(role.name, help=role.help, description=role.help + (
        ". Starts a vLLM OpenAI server for this role with its KV connector, waits until it is healthy, "
        "serves GET /info and /health on --info-port, and stops the server on SIGINT/SIGTERM."))
    node_flags = add_flags(p, NodeSettings, defaults=role.defaults.as_settings())
    engine_flags = add_flags(p.add_argument_group("engine (the same on both nodes of a cluster)"), EngineSettings)
    p.add_argument("--settings", metavar="JSON", default=None,
                   help="every setting as one JSON object (what `disagg up` passes); no other flag with it")
    p.set_defaults(role=role.name, **{_NODE_FLAGS: node_flags, _ENGINE_FLAGS: engine_flags})
    return p


def settings_from_args(role: NodeRole, args: argparse.Namespace) -> NodeSettings:
    """The node's settings from its command line: the JSON of `--settings`, or the flags over the role's
    defaults. ConfigError names what is wrong."""
    node_values = given_values(args, getattr(args, _NODE_FLAGS))
    engine_values = given_values(args, getattr(args, _ENGINE_FLAGS))
    if args.settings is not None:
        if node_values or engine_values:
            raise ConfigError(f"--settings carries every setting; drop {', '.join(sorted({**node_values, **engine_values}))}")
        settings = NodeSettings.from_json(args.settings)
        if settings.role != role.name:
            raise ConfigError(f"--settings are for a {settings.role} node, not a {role.name} node")
        return settings
    if "env" in node_values:
        node_values["env"] = pairs_to_dict(node_values["env"])
    return NodeSettings.build(role=role.name, **{**role.defaults.as_settings(), **node_values}, engine=engine_values)
