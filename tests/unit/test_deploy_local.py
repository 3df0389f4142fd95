"""The local launcher: what it plans to start, busy ports, and stopping a process group whole."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy import local
from deploy.processes import ManagedProcess, stop_all


@pytest.fixture()
def config(tmp_path: Path) -> local.LocalClusterConfig:
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 1, "num_attention_heads": 1,
                                                      "hidden_size": 8}))
    return local.LocalClusterConfig(model_dir=tmp_path, baseline_port=8001, log_dir=tmp_path / "logs")


def test_disagg_plan_starts_nodes_then_routers(config):
    procs = local.plan(config)
    assert [p.name for p in procs] == ["prefill", "decode", "router", "baseline"]
    router = procs[2].argv
    assert router[router.index("--prefill") + 1] == "http://127.0.0.1:8101"
    assert router[router.index("--decode") + 1] == "http://127.0.0.1:8201"
    baseline = procs[3].argv
    assert baseline[baseline.index("--mode") + 1] == "colocated" and "--prefill" not in baseline
    assert procs[0].argv[procs[0].argv.index("--kv-port") + 1] == "5601"
    assert procs[1].argv[procs[1].argv.index("--kv-port") + 1] == "5602"


def test_nodes_restart_their_engine_only_when_asked(config):
    import dataclasses

    for restarts in (0, 2):
        procs = local.plan(dataclasses.replace(config, restart_on_crash=restarts))
        for node in procs[:2]:
            assert node.argv[node.argv.index("--restart-on-crash") + 1] == str(restarts)


def test_colocated_plan_has_no_prefill_and_no_connector(tmp_path, config):
    colocated = local.LocalClusterConfig(model_dir=config.model_dir, mode="colocated", log_dir=tmp_path)
    procs = local.plan(colocated)
    assert [p.name for p in procs] == ["decode", "router"]
    assert procs[0].argv[procs[0].argv.index("--transport") + 1] == "none"


def test_busy_port_is_found_before_anything_starts(config):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        busy_config = local.LocalClusterConfig(model_dir=config.model_dir, router_port=port, log_dir=config.log_dir)
        assert port in local.ports_in_use(busy_config)


def test_up_refuses_busy_ports_with_a_clear_message(config):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "disagg", "up", "--local", "--model", str(config.model_dir),
                                 "--port", str(port), "--log-dir", str(config.log_dir)],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"ports already in use: [{port}]" in result.stderr
    assert not config.log_dir.exists(), "nothing may start"


def test_stop_kills_the_whole_process_group(tmp_path):
    pid_file = tmp_path / "child.pid"
    proc = ManagedProcess(name="t", argv=["sh", "-c", f"sleep 300 & echo $! > {pid_file}; wait"],
                          health_url="", log_path=tmp_path / "t.log")
    proc.start()
    deadline_s = time.monotonic() + 10
    while not pid_file.exists() and time.monotonic() < deadline_s:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    assert _running(child)
    proc.stop(grace_s=5)
    assert proc.exit_code() is not None
    deadline_s = time.monotonic() + 5
    while _running(child) and time.monotonic() < deadline_s:
        time.sleep(0.05)
    assert not _running(child), "the group's other processes must be gone too"


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphaned zombie may wait for a reaper that never comes here)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_cli_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "disagg", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for command in ("convert", "prefill", "decode", "router", "up", "bench", "kv-size"):
        assert command in out.stdout


def test_supervise_returns_failure_as_soon_as_one_process_dies(tmp_path):
    lasting = ManagedProcess(name="lasting", argv=["sleep", "300"], health_url="", log_path=tmp_path / "a.log")
    dying = ManagedProcess(name="dying", argv=["sh", "-c", "echo bye; exit 3"], health_url="",
                           log_path=tmp_path / "b.log")
    procs = [lasting, dying]
    try:
        for proc in procs:
            proc.start()
        assert local.supervise(procs) == 1
        assert dying.exit_code() == 3 and lasting.exit_code() is None
    finally:
        stop_all(procs, grace_s=5)
    assert lasting.exit_code() is not None
