"""`disagg up FILE --dry-run` (and `up --local --dry-run`): per host what would run, with no secret printed
and nothing started (no ssh, no process), for every example cluster file, with and without --platform."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from core.host import PLATFORMS
from deploy import dry_run
from disagg.cli import main
from tests.support.cluster_launches import EXAMPLE_FILES, EXAMPLES, LLAMA

pytestmark = pytest.mark.timeout(60)
SECRET = "s3cr3t-value-never-printed"
TOKEN = "0123456789abcdef" * 4


@pytest.fixture()
def nothing_starts(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a dry run started a process: {args[:1]}")

    for name in ("Popen", "run", "call", "check_call", "check_output"):
        monkeypatch.setattr(subprocess, name, refuse)


def with_secrets(example: str, tmp_path: Path) -> Path:
    """The example file plus a secret in every host's environment and a real token file."""
    token_file = tmp_path / "cluster-token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    text = (EXAMPLES / f"{example}.toml").read_text()
    lines = [line for line in text.splitlines() if not line.startswith("token_file")]
    out = [f'token_file = "{token_file}"']
    hosts, with_env = [], set()
    for line in lines:
        out.append(line)
        header = line.split("#")[0].strip()
        if header.startswith("[hosts.") and header.endswith(".env]"):
            with_env.add(header[len("[hosts."):-len(".env]")])
            out.append(f'HF_TOKEN = "{SECRET}"')
        elif header.startswith("[hosts."):
            hosts.append(header[len("[hosts."):-1])
    out += [f'[hosts.{host}.env]\nHF_TOKEN = "{SECRET}"' for host in hosts if host not in with_env]
    path = tmp_path / f"{example}.toml"
    path.write_text("\n".join(out) + "\n")
    return path


@pytest.mark.parametrize("platform", [None, *PLATFORMS])
@pytest.mark.parametrize("example", EXAMPLE_FILES)
def test_dry_run_prints_every_component_and_no_secret_and_starts_nothing(example, platform, tmp_path, capsys,
                                                                          nothing_starts):
    path = with_secrets(example, tmp_path)
    argv = ["up", str(path), "--dry-run", "--model-config", str(LLAMA)]
    assert main([*argv, *(["--platform", platform] if platform else [])]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out and TOKEN not in out
    assert "HF_TOKEN" in out and dry_run.MASK in out
    for component in ("prefill", "decode", "router"):
        assert f"  {component} ({component})" in out
    assert out.count("pre-flight: ") >= 2 and "ports free" in out
    if platform is None:
        assert "--platform" in out and "vLLM on a" not in out
    else:
        assert out.count(f"vLLM on a {platform} host: python -m vllm.entrypoints.openai.api_server") == 2
        assert out.count(f"transport on a {platform} host: ") == 2 and "DISAGG_CLUSTER_TOKEN='***'" in out


def test_a_model_folder_missing_here_is_said_not_fatal(tmp_path, capsys, nothing_starts):
    path = with_secrets("spark-pair", tmp_path)
    assert main(["up", str(path), "--dry-run", "--platform", "dgx-spark"]) == 0
    out = capsys.readouterr().out
    assert "is not on this machine; give a local copy" in out and "--model-config DIR" in out


def test_local_dry_run_shows_this_host_kind(capsys, nothing_starts):
    assert main(["up", "--local", "--dry-run", "--model", str(LLAMA), "--transport", "tcp"]) == 0
    out = capsys.readouterr().out
    assert "(this machine)" in out and "vLLM on a cpu host:" in out and "transport on a cpu host: tcp" in out
    # as `up --local` runs it: with the fresh cluster token it writes into the run folder, masked
    assert "--cluster-token-file" in out and "DISAGG_CLUSTER_TOKEN='***'" in out


def test_masked_hides_secret_names_only():
    env = {"HF_TOKEN": "a", "AWS_SECRET_ACCESS_KEY": "b", "REDIS_PASSWORD": "c", "UCX_TLS": "rc"}
    assert dry_run.masked(env) == {"HF_TOKEN": "***", "AWS_SECRET_ACCESS_KEY": "***", "REDIS_PASSWORD": "***",
                                   "UCX_TLS": "rc"}
