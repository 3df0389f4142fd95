"""KV sizing: known values, derived quantities, malformed configs and the `disagg kv-size` command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench import cli, kv_size
from bench.kv_size import KVGeometry, ModelConfigError
from bench.kv_size_cli import parse_param_count

LLAMA_8B_FP16 = KVGeometry("Llama-3.1-8B", 32, 32, 8, 128, "fp16")
SMOLLM2_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 576, "num_attention_heads": 9,
    "num_hidden_layers": 30, "num_key_value_heads": 3, "torch_dtype": "float32",
}


def write_config(folder: Path, config: object) -> Path:
    path = folder / "config.json"
    path.write_text(json.dumps(config) if not isinstance(config, str) else config, encoding="utf-8")
    return path


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="disagg")
    cli.add_parsers(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


# --- known values -------------------------------------------------------------------------------

def test_llama_8b_fp16_per_token_and_per_4k_sequence():
    assert LLAMA_8B_FP16.kv_bytes_per_token == 131_072
    assert kv_size.kv_bytes_per_sequence(LLAMA_8B_FP16, 4096) == 536_870_912 == 512 * 2**20


def test_llama_8b_preset_matches_and_is_gqa():
    geometry = kv_size.preset_geometry("llama-3.1-8b")  # case-insensitive
    assert geometry.kv_bytes_per_token == 131_072  # bf16 has the same 2 bytes as fp16
    assert geometry.attention_kind == "GQA"


def test_smollm2_config_fp32_is_46080_bytes_per_token(tmp_path):
    write_config(tmp_path, SMOLLM2_CONFIG)
    geometry = kv_size.load_config_geometry(tmp_path)  # the folder holding config.json
    assert (geometry.head_dim, geometry.dtype) == (64, "fp32")
    assert geometry.kv_bytes_per_token == 46_080


def test_other_presets_cover_mha_gqa_mqa():
    assert kv_size.preset_geometry("Llama-3.1-70B").kv_bytes_per_token == 2 * 80 * 8 * 128 * 2
    mha = kv_size.preset_geometry("Llama-2-7B")
    assert (mha.attention_kind, mha.kv_bytes_per_token) == ("MHA", 524_288)
    mqa = kv_size.preset_geometry("Falcon-7B")
    assert (mqa.attention_kind, mqa.kv_bytes_per_token) == ("MQA", 8_192)
    assert kv_size.preset_geometry("SmolLM2-135M").kv_bytes_per_token == 46_080


def test_explicit_head_dim_wins_over_hidden_size_ratio(tmp_path):
    config = {"num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 4,
              "hidden_size": 3072, "head_dim": 256, "torch_dtype": "bfloat16"}
    geometry = kv_size.load_config_geometry(write_config(tmp_path, config))
    assert geometry.head_dim == 256  # not 3072 / 8 = 384
    assert geometry.kv_bytes_per_token == 2 * 2 * 4 * 256 * 2


def test_kv_heads_default_to_attention_heads(tmp_path):
    config = {"num_hidden_layers": 4, "num_attention_heads": 16, "hidden_size": 1024, "torch_dtype": "float16"}
    geometry = kv_size.load_config_geometry(write_config(tmp_path, config))
    assert geometry.num_kv_heads == 16 and geometry.attention_kind == "MHA"
    assert geometry.kv_bytes_per_token == 2 * 4 * 16 * 64 * 2


def test_multimodal_text_config_is_used(tmp_path):
    write_config(tmp_path, {"model_type": "vlm", "text_config": SMOLLM2_CONFIG})
    assert kv_size.load_config_geometry(tmp_path).kv_bytes_per_token == 46_080


# --- derived quantities --------------------------------------------------------------------------

def test_memory_for_concurrency_applies_overhead_factor():
    assert kv_size.kv_memory_bytes(LLAMA_8B_FP16, 4096, 2, overhead_factor=1.25) == 1_342_177_280
    assert kv_size.kv_memory_bytes(LLAMA_8B_FP16, 4096, 1) == 644_245_095  # ceil(512 MiB × 1.2)


@pytest.mark.parametrize("phi", [0.9, 2.5])
def test_overhead_factor_out_of_range_rejected(phi):
    with pytest.raises(ValueError, match="overhead factor"):
        kv_size.kv_memory_bytes(LLAMA_8B_FP16, 4096, 1, overhead_factor=phi)


def test_max_sequences_in_memory():
    assert kv_size.max_sequences(LLAMA_8B_FP16, 40 * 2**30, 4096, overhead_factor=1.0) == 80
    assert kv_size.max_sequences(LLAMA_8B_FP16, 40 * 2**30, 4096, overhead_factor=1.2) == 66


def test_transfer_time_uses_decimal_gigabytes():
    assert kv_size.transfer_time_s(536_870_912, 1.0) == pytest.approx(0.536870912)
    with pytest.raises(ValueError):
        kv_size.transfer_time_s(1, 0)


def test_decode_bandwidth_kv_only_and_with_weights():
    kv_only = kv_size.decode_bandwidth_gb_s(LLAMA_8B_FP16, 10, 1000)
    assert kv_only == pytest.approx(131_072 * 1000 * 10 / 1e9)
    with_weights = kv_size.decode_bandwidth_gb_s(LLAMA_8B_FP16, 10, 1000, num_params=1e9,
                                                 weight_bytes_per_param=2, concurrency=2)
    assert with_weights == pytest.approx(kv_only + 10 * 1e9 * 2 / 2 / 1e9)


def test_param_count_suffixes():
    assert parse_param_count("8B") == 8e9
    assert parse_param_count("135m") == 135e6
    assert parse_param_count("7e9") == 7e9
    with pytest.raises(argparse.ArgumentTypeError):
        parse_param_count("lots")


# --- malformed input -----------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["num_hidden_layers", "num_attention_heads"])
def test_missing_field_named_with_file(tmp_path, field):
    config = dict(SMOLLM2_CONFIG)
    del config[field]
    path = write_config(tmp_path, config)
    with pytest.raises(ModelConfigError) as excinfo:
        kv_size.load_config_geometry(path)
    assert str(path) in str(excinfo.value) and field in str(excinfo.value)


def test_missing_head_dim_and_hidden_size(tmp_path):
    config = {k: v for k, v in SMOLLM2_CONFIG.items() if k != "hidden_size"}
    with pytest.raises(ModelConfigError, match="hidden_size"):
        kv_size.load_config_geometry(write_config(tmp_path, config))


@pytest.mark.parametrize("field,value", [("num_hidden_layers", -30), ("num_key_value_heads", 0),
                                         ("head_dim", "64"), ("num_attention_heads", True),
                                         ("num_hidden_layers", 2.5)])
def test_non_positive_or_non_integer_field_rejected(tmp_path, field, value):
    path = write_config(tmp_path, {**SMOLLM2_CONFIG, field: value})
    with pytest.raises(ModelConfigError, match=f"'{field}' must be a positive integer"):
        kv_size.load_config_geometry(path)


def test_non_json_file_rejected(tmp_path):
    path = write_config(tmp_path, "{not json")
    with pytest.raises(ModelConfigError, match="not a readable JSON file") as excinfo:
        kv_size.load_config_geometry(path)
    assert str(path) in str(excinfo.value)


def test_json_list_and_missing_file_rejected(tmp_path):
    with pytest.raises(ModelConfigError, match="JSON object"):
        kv_size.load_config_geometry(write_config(tmp_path, [1, 2]))
    with pytest.raises(ModelConfigError, match="no such file"):
        kv_size.load_config_geometry(tmp_path / "absent" / "config.json")


def test_inconsistent_heads_and_unknown_dtype_rejected(tmp_path):
    with pytest.raises(ModelConfigError, match="not a multiple"):
        kv_size.load_config_geometry(write_config(tmp_path, {**SMOLLM2_CONFIG, "num_key_value_heads": 4}))
    with pytest.raises(ModelConfigError, match="torch_dtype"):
        kv_size.load_config_geometry(write_config(tmp_path, {**SMOLLM2_CONFIG, "torch_dtype": "int3"}))


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ModelConfigError, match="unknown preset 'GPT-5'.*Llama-3.1-8B"):
        kv_size.preset_geometry("GPT-5")


# --- the command ---------------------------------------------------------------------------------

def test_cli_json_for_preset_with_dtype_override(capsys):
    assert run_cli(["kv-size", "--preset", "SmolLM2-135M", "--dtype", "bf16", "--json",
                    "--memory-gib", "1", "--bandwidth-gb-s", "1", "--decode-tokens-per-s", "5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kv_bytes_per_token"] == 23_040
    assert report["kv_bytes_per_sequence"] == 23_040 * 4096
    assert report["max_sequences"] == int(2**30 // (23_040 * 4096 * 1.2))
    assert report["transfer_time_s"] == pytest.approx(23_040 * 4096 / 1e9)
    assert report["decode"]["bandwidth_gb_s"] == pytest.approx(5 * 23_040 * 4096 / 1e9)


def test_cli_table_for_config_file(tmp_path, capsys):
    path = write_config(tmp_path, SMOLLM2_CONFIG)
    assert run_cli(["kv-size", "--config", str(path), "--context-tokens", "100"]) == 0
    out = capsys.readouterr().out
    assert "46,080 B" in out and "4,608,000 B" in out


def test_cli_malformed_config_exits_2_naming_file_and_field(tmp_path, capsys):
    path = write_config(tmp_path, {**SMOLLM2_CONFIG, "num_key_value_heads": -3})
    assert run_cli(["kv-size", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "num_key_value_heads" in err


def test_cli_bad_phi_unknown_preset_and_no_source_exit_2(capsys):
    assert run_cli(["kv-size", "--preset", "Llama-3.1-8B", "--overhead-factor", "3"]) == 2
    assert run_cli(["kv-size", "--preset", "nope"]) == 2
    assert run_cli(["kv-size"]) == 2
    assert "error" in capsys.readouterr().err


def test_cli_rejects_negative_context_at_parse_time():
    with pytest.raises(SystemExit) as excinfo:
        run_cli(["kv-size", "--preset", "Llama-3.1-8B", "--context-tokens", "-5"])
    assert excinfo.value.code == 2
