"""Node settings: validation, and the vLLM command line and environment they imply."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.kv_geometry import model_geometry
from disagg.node_config import DecodeConfig, PrefillConfig, vllm_command, vllm_env
from transport.config import TransportSettings, kv_transfer_config

SMOLLM2_CONFIG = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                  "hidden_size": 576, "model_type": "llama"}


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
    return tmp_path


def test_prefill_command_uses_nixl_producer_with_host_buffer(model_dir):
    config = PrefillConfig(model_dir=model_dir, served_model_name="m",
                           transport=TransportSettings(name="nixl", role="prefill", kv_port=5601),
                           cpu_cores="0", prefix_caching=False)
    cmd = vllm_command(config)
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--port") + 1] == "8100" and "--enforce-eager" in cmd
    assert "--no-enable-prefix-caching" in cmd
    kv = json.loads(cmd[cmd.index("--kv-transfer-config") + 1])
    assert kv == {"kv_connector": "NixlConnector", "kv_role": "kv_producer", "kv_buffer_device": "cpu",
                  "kv_connector_extra_config": {"kv_lease_duration": 30}}  # no failure policy on the producer
    env = vllm_env(config, {"PATH": "/bin"})
    assert env["VLLM_NIXL_SIDE_CHANNEL_PORT"] == "5601" and env["VLLM_CPU_OMP_THREADS_BIND"] == "0"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1" and env["PATH"] == "/bin"


def test_decode_defaults_and_tcp_transport(model_dir):
    config = DecodeConfig(model_dir=model_dir, served_model_name="m",
                          transport=TransportSettings(name="tcp", role="decode", kv_port=5602, kv_host="10.0.0.2"))
    assert (config.port, config.info_port) == (8200, 8201)
    kv = kv_transfer_config(config.transport)
    assert kv["kv_role"] == "kv_consumer" and kv["kv_connector_module_path"] == "transport.tcp.connector"
    assert kv["kv_connector_extra_config"]["port"] == 5602
    assert kv["kv_load_failure_policy"] == "recompute"  # never decode from missing or corrupt KV
    assert "VLLM_NIXL_SIDE_CHANNEL_PORT" not in vllm_env(config, {})


def test_transport_none_runs_without_connector(model_dir):
    config = DecodeConfig(model_dir=model_dir, served_model_name="m",
                          transport=TransportSettings(name="none", role="decode"))
    assert "--kv-transfer-config" not in vllm_command(config)


@pytest.mark.parametrize("kwargs,match", [
    ({"port": 0}, "port"),
    ({"port": 8100, "info_port": 8100}, "differ"),
    ({"max_model_len": 1}, "max_model_len"),
])
def test_bad_node_settings_are_rejected(model_dir, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PrefillConfig(model_dir=model_dir, served_model_name="m",
                      transport=TransportSettings(name="nixl", role="prefill"), **kwargs)


def test_missing_model_and_mismatched_roles_are_rejected(tmp_path, model_dir):
    with pytest.raises(ConfigError, match="config.json"):
        PrefillConfig(model_dir=tmp_path / "nope", served_model_name="m",
                      transport=TransportSettings(name="nixl", role="prefill"))
    with pytest.raises(ConfigError, match="transport settings are for decode"):
        PrefillConfig(model_dir=model_dir, served_model_name="m", transport=TransportSettings(name="nixl", role="decode"))
    with pytest.raises(ConfigError, match="unknown transport"):
        TransportSettings(name="carrier-pigeon", role="decode")


def test_kv_geometry_of_smollm2_fp32_is_46080_bytes_per_token(model_dir):
    assert model_geometry(model_dir, "float32").kv_bytes_per_token == 46_080
    assert model_geometry(model_dir, "float16").kv_bytes_per_token == 23_040


def test_kv_buffer_device_choice_on_cpu_hosts():
    from disagg.node_cli import _kv_buffer_device

    assert _kv_buffer_device("auto", cuda=False) == "cpu"
    with pytest.raises(ConfigError, match="CUDA host"):
        _kv_buffer_device("cuda", cuda=False)


def test_tcp_block_server_can_bind_another_address_than_it_advertises():
    bound = TransportSettings(name="tcp", role="prefill", kv_host="10.0.0.1", kv_bind_host="0.0.0.0")
    extra = kv_transfer_config(bound)["kv_connector_extra_config"]
    assert (extra["host"], extra["bind_host"]) == ("10.0.0.1", "0.0.0.0")
    assert "bind_host" not in kv_transfer_config(TransportSettings(name="tcp", role="prefill"))["kv_connector_extra_config"]
    with pytest.raises(ConfigError, match="nixl binds"):
        TransportSettings(name="nixl", role="prefill", kv_host="10.0.0.1", kv_bind_host="0.0.0.0")


def test_tcp_transfer_timeout_reaches_the_connector_and_is_bounded():
    extra = kv_transfer_config(TransportSettings(name="tcp", role="decode", transfer_timeout_s=8))
    assert extra["kv_connector_extra_config"]["transfer_timeout_s"] == 8
    for bad in (0, 0.05, 7200):
        with pytest.raises(ConfigError, match="transfer timeout"):
            TransportSettings(name="tcp", role="decode", transfer_timeout_s=bad)


@pytest.mark.parametrize(("config_dtype", "auto_dtype", "kv_bytes"), [
    ("bfloat16", "bf16", 23_040), ("float16", "fp16", 23_040), ("float32", "fp16", 23_040)])
def test_kv_geometry_resolves_auto_as_vllm_does(tmp_path, config_dtype, auto_dtype, kv_bytes):
    """`--dtype auto`: bf16 for a bf16 model, fp16 for fp16 and fp32 models (vLLM's rule); GPU hosts default
    to it, so a node without --dtype must not fail on it."""
    config = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576,
              "torch_dtype": config_dtype}
    (tmp_path / "config.json").write_text(json.dumps(config))
    geometry = model_geometry(tmp_path, "auto")
    assert (geometry.dtype, geometry.kv_bytes_per_token) == (auto_dtype, kv_bytes)
    assert model_geometry(tmp_path, "float32").kv_bytes_per_token == 46_080
    assert model_geometry(tmp_path, "auto", kv_cache_dtype="fp8").kv_bytes_per_token == 11_520
