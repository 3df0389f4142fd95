"""Node settings: validation, the JSON hand-over, and the vLLM command line and environment they imply on a
host (`node.launch.resolve` with a `Platform` given by the test)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.host import Platform
from core.kv_geometry import model_geometry
from decode_node.role import ROLE as DECODE
from node.cli import add_node_parser, settings_from_args
from node.launch import resolve
from node.settings import EngineSettings, NodeSettings
from prefill_node.role import ROLE as PREFILL

SMOLLM2_CONFIG = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                  "hidden_size": 576, "model_type": "llama", "torch_dtype": "float32"}
CPU_HOST = Platform(cuda=False, cores=(0, 1))


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
    return tmp_path


def settings(role, model_dir: Path, engine: dict | None = None, **values) -> NodeSettings:
    return NodeSettings.build(role=role.name, **role.defaults.as_settings(), model=str(model_dir),
                              engine=EngineSettings(**(engine or {})), **values)


def launch(role, model_dir: Path, platform: Platform = CPU_HOST, engine: dict | None = None, **values):
    return resolve(settings(role, model_dir, engine, **values), role, platform, environ={})


def test_prefill_command_uses_nixl_producer_with_host_buffer(model_dir):
    node = launch(PREFILL, model_dir, transport="nixl", cpu_cores="0", engine={"prefix_caching": False})
    cmd = node.vllm_command()
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--port") + 1] == "8100" and "--enforce-eager" in cmd
    assert "--no-enable-prefix-caching" in cmd
    kv = json.loads(cmd[cmd.index("--kv-transfer-config") + 1])
    assert kv == {"kv_connector": "NixlConnector", "kv_connector_module_path": "transport.nixl.connector",
                  "kv_role": "kv_producer", "kv_buffer_device": "cpu",
                  "kv_connector_extra_config": {"kv_lease_duration": 30, "progress_thread": False}}  # no failure policy
    env = node.vllm_env({"PATH": "/bin"})
    assert env["VLLM_NIXL_SIDE_CHANNEL_PORT"] == "5601" and env["VLLM_CPU_OMP_THREADS_BIND"] == "0"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1" and env["PATH"] == "/bin"
    assert "UCX_TLS" not in env  # kv_link auto: UCX picks


def test_decode_defaults_and_tcp_transport(model_dir):
    node = launch(DECODE, model_dir, transport="tcp", kv_host="10.0.0.2")
    assert (node.settings.port, node.settings.info_port, node.settings.kv_port) == (8200, 8201, 5602)
    kv = node.kv_transfer_config()
    assert kv["kv_role"] == "kv_consumer" and kv["kv_connector_module_path"] == "transport.tcp.connector"
    assert kv["kv_connector_extra_config"]["port"] == 5602
    assert kv["kv_load_failure_policy"] == "recompute"  # never decode from missing or corrupt KV
    assert "VLLM_NIXL_SIDE_CHANNEL_PORT" not in node.vllm_env({})
    assert node.cpu_cores == "1"  # the role's core on a CPU host with two cores


def test_transport_none_runs_without_connector(model_dir):
    node = launch(DECODE, model_dir, transport="none")
    assert "--kv-transfer-config" not in node.vllm_command() and node.info(True, None).kv_role == "none"


@pytest.mark.parametrize("values,match", [
    ({"port": 0}, "port"),
    ({"port": 8100, "info_port": 8100}, "differ"),
    ({"engine": EngineSettings.model_construct(max_model_len=1)}, "max_model_len"),
    ({"transport": "carrier-pigeon"}, "unknown transport"),
    ({"kv_link": "carrier-pigeon"}, "kv_link must be one of"),
    ({"cpu_cores": "zero"}, "cpu_cores"),
])
def test_bad_node_settings_are_rejected(model_dir, values, match):
    values = {**PREFILL.defaults.as_settings(), **values}
    if "engine" in values:  # an engine built without validation must still be refused by the node's validation
        with pytest.raises(ConfigError, match=match):
            NodeSettings.build(role="prefill", **{**values, "engine": values["engine"].model_dump()})
        return
    with pytest.raises(ConfigError, match=match):
        NodeSettings.build(role="prefill", **values)


def test_missing_model_and_mismatched_roles_are_rejected(tmp_path, model_dir):
    with pytest.raises(ConfigError, match="config.json"):
        launch(PREFILL, tmp_path / "nope")
    with pytest.raises(ConfigError, match="not a prefill node"):
        resolve(settings(DECODE, model_dir), PREFILL, CPU_HOST, environ={})


def test_kv_geometry_of_smollm2_fp32_is_46080_bytes_per_token(model_dir):
    assert model_geometry(model_dir, "float32").kv_bytes_per_token == 46_080
    assert model_geometry(model_dir, "float16").kv_bytes_per_token == 23_040
    assert launch(PREFILL, model_dir).info(True, 1).kv_bytes_per_token == 46_080  # float32 on a CPU host


def test_kv_buffer_device_choice_on_cpu_hosts(model_dir):
    assert launch(PREFILL, model_dir, engine={"kv_buffer_device": "auto"}).link.kv_buffer_device == "cpu"
    with pytest.raises(ConfigError, match="CUDA host"):
        launch(PREFILL, model_dir, engine={"kv_buffer_device": "cuda"})


def test_tcp_block_server_can_bind_another_address_than_it_advertises(model_dir):
    bound = launch(PREFILL, model_dir, transport="tcp", kv_host="10.0.0.1", kv_bind_host="0.0.0.0")
    extra = bound.kv_transfer_config()["kv_connector_extra_config"]
    assert (extra["host"], extra["bind_host"]) == ("10.0.0.1", "0.0.0.0")
    plain = launch(PREFILL, model_dir, transport="tcp").kv_transfer_config()["kv_connector_extra_config"]
    assert "bind_host" not in plain
    with pytest.raises(ConfigError, match="nixl binds"):
        settings(PREFILL, model_dir, transport="nixl", kv_host="10.0.0.1", kv_bind_host="0.0.0.0")


def test_tcp_transfer_timeout_reaches_the_connector_and_is_bounded(model_dir):
    node = launch(DECODE, model_dir, transport="tcp", engine={"kv_transfer_timeout_s": 8})
    assert node.kv_transfer_config()["kv_connector_extra_config"]["transfer_timeout_s"] == 8
    for bad in (0, 0.05, 7200):
        with pytest.raises(ConfigError, match="kv_transfer_timeout_s"):
            NodeSettings.build(role="decode", **DECODE.defaults.as_settings(),
                               engine={"kv_transfer_timeout_s": bad})


@pytest.mark.parametrize(("config_dtype", "auto_dtype", "kv_bytes"), [
    ("bfloat16", "bf16", 23_040), ("float16", "fp16", 23_040), ("float32", "fp16", 23_040)])
def test_kv_geometry_resolves_auto_as_vllm_does(tmp_path, config_dtype, auto_dtype, kv_bytes):
    """`--dtype auto`: bf16 for a bf16 model, fp16 for fp16 and fp32 models (vLLM's rule); GPU hosts default
    to it, so a node without --dtype must not fail on it."""
    (tmp_path / "config.json").write_text(json.dumps({**SMOLLM2_CONFIG, "torch_dtype": config_dtype}))
    geometry = model_geometry(tmp_path, "auto")
    assert (geometry.dtype, geometry.kv_bytes_per_token) == (auto_dtype, kv_bytes)
    assert model_geometry(tmp_path, "float32").kv_bytes_per_token == 46_080
    assert model_geometry(tmp_path, "auto", kv_cache_dtype="fp8").kv_bytes_per_token == 11_520


def test_a_cuda_host_with_default_flags_starts_with_dtype_auto(tmp_path):
    """The crash a first GPU user would have hit: no --dtype on a CUDA host passes 'auto' to the geometry."""
    (tmp_path / "config.json").write_text(json.dumps({**SMOLLM2_CONFIG, "torch_dtype": "bfloat16"}))
    gpu = Platform(cuda=True, cores=tuple(range(16)), device_name="NVIDIA H100 80GB HBM3")
    node = launch(PREFILL, tmp_path, gpu)
    cmd, env = node.vllm_command(), node.vllm_env({})
    assert cmd[cmd.index("--dtype") + 1] == "auto" and "--enforce-eager" not in cmd
    assert node.geometry.kv_bytes_per_token == 23_040 and node.cpu_cores is None
    assert "VLLM_CPU_KVCACHE_SPACE" not in env and "VLLM_CPU_OMP_THREADS_BIND" not in env


def test_flags_and_json_give_the_same_settings(model_dir):
    parser = argparse.ArgumentParser()
    add_node_parser(parser.add_subparsers(), DECODE)
    argv = ["decode", "--model", str(model_dir), "--transport", "tcp", "--port", "9000", "--env", "A=1",
            "--env", "B=2", "--no-prefix-caching", "--kv-lease-s", "12", "--vllm-args", '["--seed", "1"]']
    from_flags = settings_from_args(DECODE, parser.parse_args(argv))
    assert from_flags.port == 9000 and from_flags.info_port == 8201 and from_flags.env == {"A": "1", "B": "2"}
    assert from_flags.engine.prefix_caching is False and from_flags.engine.kv_lease_s == 12
    assert from_flags.engine.vllm_args == ("--seed", "1")
    from_json = settings_from_args(DECODE, parser.parse_args(["decode", "--settings", from_flags.to_json()]))
    assert from_json == from_flags
    with pytest.raises(ConfigError, match="--settings carries every setting"):
        settings_from_args(DECODE, parser.parse_args(["decode", "--settings", from_flags.to_json(), "--port", "1"]))
    with pytest.raises(ConfigError, match="not a prefill node"):
        settings_from_args(PREFILL, parser.parse_args(["decode", "--settings", from_flags.to_json()]))
