"""FP8 KV caches and wire dtypes in the node settings: the command line and KV bytes per token a host gets
(a simulated GPU host through `node.launch.resolve`), the connector settings, the per-request choice, and
the cost model behind `kv_wire_dtype = "auto"`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.host import Platform
from decode_node.role import ROLE as DECODE
from node import kv_cache_dtype
from node.kv_cache_dtype import fp8_kv_cache_support
from node.launch import resolve
from node.settings import EngineSettings, NodeSettings
from prefill_node.role import ROLE as PREFILL
from transport.tcp.blocks import RegionBlockStore
from transport.tcp.scheduler_side import requested_wire_dtype
from transport.tcp.settings import TcpConnectorSettings
from transport.tcp.wire_choice import CodecThroughput, choose, cost
from transport.tcp.wire_codecs import WireCodecs
from transport.tcp.wire_dtype import WireDtype

pytestmark = pytest.mark.timeout(60)

SMOLLM2_CONFIG = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                  "hidden_size": 576, "model_type": "llama", "torch_dtype": "bfloat16"}
GPU_HOST = Platform(cuda=True, cores=tuple(range(16)), device_name="NVIDIA H100 80GB HBM3")
CPU_HOST = Platform(cuda=False, cores=(0, 1))


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
    return tmp_path


def launch(role, model_dir: Path, platform: Platform, **engine):
    node = NodeSettings.build(role=role.name, **role.defaults.as_settings(), model=str(model_dir), transport="tcp",
                              engine=EngineSettings(**engine))
    return resolve(node, role, platform, environ={})


@pytest.mark.parametrize("role", [PREFILL, DECODE])
def test_fp8_kv_cache_on_a_gpu_host_reaches_vllm_and_the_kv_bytes(model_dir, role):
    node = launch(role, model_dir, GPU_HOST, kv_cache_dtype="fp8")
    cmd = node.vllm_command()
    assert cmd[cmd.index("--kv-cache-dtype") + 1] == "fp8"
    assert node.info(True, 1).kv_bytes_per_token == 2 * 30 * 3 * 64 * 1 == 11_520  # one byte per element
    default = launch(role, model_dir, GPU_HOST)
    assert "--kv-cache-dtype" not in default.vllm_command()
    assert default.info(True, 1).kv_bytes_per_token == 23_040  # bf16


def test_fp8_support_by_host():
    assert fp8_kv_cache_support(GPU_HOST)[0]
    assert fp8_kv_cache_support(CPU_HOST, frozenset({"avx2", "avx512f"})) == (True, "CPU backend with avx512f")
    assert fp8_kv_cache_support(CPU_HOST, frozenset({"amx_tile"}))[0]
    ok, why = fp8_kv_cache_support(CPU_HOST, frozenset({"avx2"}))
    assert not ok and "AVX-512 or AMX" in why
    ok, why = fp8_kv_cache_support(Platform(cuda=False, cores=(0,), arch="aarch64"))
    assert not ok and "aarch64" in why


def test_fp8_on_a_cpu_without_avx512_fails_at_resolve_with_the_reason(model_dir, monkeypatch):
    monkeypatch.setattr(kv_cache_dtype, "cpu_flags", lambda: frozenset({"sse4_2", "avx2"}))
    with pytest.raises(ConfigError, match="--kv-cache-dtype fp8_e4m3: not on this host.*AVX-512 or AMX"):
        launch(PREFILL, model_dir, CPU_HOST, kv_cache_dtype="fp8_e4m3", dtype="float32")
    monkeypatch.setattr(kv_cache_dtype, "cpu_flags", lambda: frozenset({"avx512f"}))
    node = launch(PREFILL, model_dir, CPU_HOST, kv_cache_dtype="fp8_e4m3", dtype="float32")
    assert node.info(True, 1).kv_bytes_per_token == 11_520


def test_wire_dtype_settings_reach_the_decode_connector(model_dir):
    node = launch(DECODE, model_dir, CPU_HOST, kv_wire_dtype="auto", kv_link_gbit_per_s=1.0)
    extra = node.kv_transfer_config()["kv_connector_extra_config"]
    assert (extra["wire_dtype"], extra["link_gbit_per_s"]) == ("auto", 1.0)
    settings = TcpConnectorSettings.from_extra_config(extra)
    assert settings.wire_dtype == "auto" and settings.link_bytes_per_s == 125e6
    plain = launch(DECODE, model_dir, CPU_HOST).kv_transfer_config()["kv_connector_extra_config"]
    assert "wire_dtype" not in plain and "link_gbit_per_s" not in plain
    with pytest.raises(ValueError, match="needs kv_link_gbit_per_s"):
        EngineSettings(kv_wire_dtype="auto")
    with pytest.raises(ValueError, match="needs link_gbit_per_s"):
        TcpConnectorSettings(wire_dtype="auto")
    with pytest.raises(ValueError, match="unknown KV wire dtype 'int4'"):
        TcpConnectorSettings(wire_dtype="int4")


def test_a_request_may_name_its_wire_dtype():
    assert requested_wire_dtype({"kv_wire_dtype": "INT8"}) == "int8"
    assert requested_wire_dtype({"kv_wire_dtype": "auto"}) == "auto"
    assert requested_wire_dtype({}) is None
    assert requested_wire_dtype({"kv_wire_dtype": "int3"}) is None  # logged; the node's setting applies


RATIOS = {WireDtype.BF16: 0.5, WireDtype.FP16: 0.5, WireDtype.INT8: 68 / 256}
FAST_CODECS = {w: CodecThroughput(3e9, 10e9) for w in RATIOS}


def test_cost_model_terms():
    c = cost(WireDtype.INT8, 256_000_000, 125e6, 68 / 256, CodecThroughput(2e9, 4e9))
    assert c.wire_nbytes == 68_000_000
    assert (c.transfer_s, c.encode_s, c.decode_s) == pytest.approx((0.544, 0.128, 0.064))
    assert c.total_s == pytest.approx(0.736)
    assert cost(WireDtype.NATIVE, 256_000_000, 125e6, 1.0, None).total_s == pytest.approx(2.048)
    with pytest.raises(ValueError):
        cost(WireDtype.INT8, 1, 125e6, 0.25, None)
    with pytest.raises(ValueError):
        cost(WireDtype.NATIVE, 1, 0, 1.0, None)


def test_slow_link_picks_int8_fast_link_native_and_in_between_bf16():
    kv = 17_000_000
    assert choose(kv, 125e6, RATIOS, FAST_CODECS).wire is WireDtype.INT8  # 1 Gbit/s
    assert choose(kv, 100e9, RATIOS, FAST_CODECS).wire is WireDtype.NATIVE  # 800 Gbit/s: converting costs more
    # int8 converts slowly, the casts fast: on a middling link the cast wins
    codecs = {WireDtype.BF16: CodecThroughput(30e9, 30e9), WireDtype.INT8: CodecThroughput(1e9, 3e9)}
    choice = choose(kv, 3e9, {w: RATIOS[w] for w in codecs}, codecs)
    assert choice.wire is WireDtype.BF16
    assert choice.reason.startswith("picked bf16: native") and "int8" in choice.reason


def test_ties_go_to_the_less_lossy():
    same = {WireDtype.BF16: CodecThroughput(1e12, 1e12), WireDtype.FP16: CodecThroughput(1e12, 1e12)}
    assert choose(1000, 1e6, {w: 0.5 for w in same}, same).wire is WireDtype.BF16
    assert choose(1000, 1e6, {}, {}).wire is WireDtype.NATIVE


def _store(kv_dtype: str | None, rows: int | None = 64) -> RegionBlockStore:
    import numpy as np

    return RegionBlockStore.from_arrays([np.zeros((2, 256), np.float32)], 1, kv_dtype, rows)


def test_node_wire_choice_follows_request_setting_and_cache(monkeypatch):
    wires = WireCodecs(TcpConnectorSettings(wire_dtype="bf16"), _store("float32"))
    assert wires.wire_for(None, 1000) is WireDtype.BF16
    assert wires.wire_for("int8", 1000) is WireDtype.INT8
    assert WireCodecs(TcpConnectorSettings(wire_dtype="bf16"), _store("bfloat16")).wire_for(None, 1) \
        is WireDtype.NATIVE  # nothing to shrink
    assert WireCodecs(TcpConnectorSettings(wire_dtype="int8"), _store("float8_e4m3fn")).wire_for(None, 1) \
        is WireDtype.NATIVE
    assert WireCodecs(TcpConnectorSettings(wire_dtype="int8"), _store("float32", None)).wire_for(None, 1) \
        is WireDtype.NATIVE  # rows unknown: no codec
    auto = WireCodecs(TcpConnectorSettings(wire_dtype="auto", link_gbit_per_s=1.0), _store("float32"))
    monkeypatch.setattr(auto, "_measured", lambda: FAST_CODECS)
    assert auto.wire_for(None, 17_000_000) is WireDtype.INT8
    assert WireCodecs(TcpConnectorSettings(), _store("float32")).wire_for("auto", 10) is WireDtype.NATIVE  # no link
