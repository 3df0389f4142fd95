"""Every process a cluster starts, as its `disagg` command line, parsed the way that process parses it, and
its nodes resolved on a simulated host (`core.host.PLATFORMS`): what the launch-matrix tests check.

Clusters (`CLUSTERS`): `up --local` with its default flags (the launcher's own plan, default model
replaced by a fixture), `disagg prefill` / `disagg decode` with default flags, and each example cluster file
in deploy/examples/ with its model folder replaced by the fixture of the same name under
tests/fixtures/models/ (config.json only: the files' folders exist on GPU hosts, not here) and its token
file by a temporary one. A node's settings come from its own arguments through the `disagg` parser
(`node.cli.settings_from_args`), so flags and `--settings JSON` (what issue 13's launcher hands a node) both
work; `up --local` is read through `deploy.local`'s plan as it is on this branch, or through the one-host
cluster spec it becomes (`deploy.local.LocalOptions`; drop the other branch once that lands).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from core.host import PLATFORMS, Platform
from decode_node.role import ROLE as DECODE
from deploy import cluster_file, cluster_plan
from node.launch import NodeLaunch, resolve
from node.role import NodeRole
from node.settings import NodeSettings
from prefill_node.role import ROLE as PREFILL
from router.config import RouterConfig

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "deploy" / "examples"
MODELS = REPO / "tests" / "fixtures" / "models"
LLAMA = MODELS / "Llama-3.1-8B-Instruct"
SMOLLM2 = MODELS / "SmolLM2-135M-Instruct"
ROLES: dict[str, NodeRole] = {"prefill": PREFILL, "decode": DECODE}
EXAMPLE_FILES = tuple(sorted(path.stem for path in EXAMPLES.glob("*.toml")))
CLUSTERS = ("local-smollm2", "local-llama", "node-defaults", *EXAMPLE_FILES)


@dataclass(frozen=True)
class Process:
    """One process of a cluster: its name and its `disagg` arguments (without `python -m disagg`)."""

    name: str
    args: tuple[str, ...]

    @property
    def role(self) -> str:
        return self.args[0]


@cache
def disagg_parser() -> argparse.ArgumentParser:
    from disagg.cli import build_parser

    return build_parser()


def processes(cluster: str, token_dir: Path) -> list[Process]:
    """The processes `cluster` (one of `CLUSTERS`) starts; a token file, where it has one, in `token_dir`."""
    if cluster == "local-smollm2":
        return _local_up(SMOLLM2)
    if cluster == "local-llama":
        return _local_up(LLAMA)
    if cluster == "node-defaults":
        return [Process(role, (role, "--model", str(LLAMA))) for role in ROLES]
    return _cluster_file(EXAMPLES / f"{cluster}.toml", token_dir)


def node_settings(process: Process) -> NodeSettings:
    """A node's settings as its process reads them from its arguments."""
    role = ROLES[process.role]
    from node.cli import settings_from_args

    return settings_from_args(role, disagg_parser().parse_args(list(process.args)))


def router_config(process: Process) -> RouterConfig:
    """A router's configuration as its process reads it from its arguments."""
    from router.cli import config_from_args

    return config_from_args(disagg_parser().parse_args(list(process.args)))


def node_launch(process: Process, host: str | Platform) -> NodeLaunch:
    """The node resolved on a simulated host (a `PLATFORMS` name) or a given one, with no environment."""
    platform = PLATFORMS[host] if isinstance(host, str) else host
    return resolve(node_settings(process), ROLES[process.role], platform, environ={})


def kv_size_bytes_per_token(model_dir: Path, dtype: str) -> int:
    """What `disagg kv-size --config MODEL --dtype DTYPE --json` reports as KV bytes per token."""
    return _kv_size(str(model_dir), dtype)


@cache
def _kv_size(model_dir: str, dtype: str) -> int:
    from disagg.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["kv-size", "--config", model_dir, "--dtype", dtype, "--json"])
    if code != 0:
        raise RuntimeError(f"disagg kv-size --config {model_dir} --dtype {dtype} exited {code}")
    return int(json.loads(out.getvalue())["kv_bytes_per_token"])


def _local_up(model_dir: Path) -> list[Process]:
    from deploy import local

    if hasattr(local, "LocalOptions"):  # issue 13: up --local is a one-host cluster spec
        spec = local.spec(local.LocalOptions.build(model=str(model_dir)))
        return [Process(c.name, tuple(c.args)) for c in cluster_plan.plan(spec)]
    procs = local.plan(local.LocalClusterConfig(model_dir=model_dir))
    return [Process(p.name, tuple(p.argv[3:])) for p in procs]  # argv: python -m disagg ARGS


def _cluster_file(path: Path, token_dir: Path) -> list[Process]:
    spec = cluster_file.load(path)
    fixture = MODELS / Path(spec.model).name
    if not (fixture / "config.json").is_file():
        raise FileNotFoundError(f"{path.name}: no fixture {fixture}/config.json for its model {spec.model}")
    update: dict[str, object] = {"model": str(fixture)}
    if spec.token_file:
        token_file = token_dir / "cluster-token"
        token_file.write_text("launch-matrix-token\n")
        token_file.chmod(0o600)
        update["token_file"] = str(token_file)
    return [Process(c.name, tuple(c.args)) for c in cluster_plan.plan(spec.model_copy(update=update))]
