"""The node supervisor's process handling, with a fake engine: /info and /health, SIGTERM stops the
engine, a killed supervisor takes its engine with it, a dead engine stops the supervisor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.threaded_server import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def node(tmp_path: Path, request: pytest.FixtureRequest):
    max_restarts = getattr(request, "param", 0)
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 2, "num_attention_heads": 4,
                                                      "num_key_value_heads": 2, "hidden_size": 64}))
    port, info_port = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.fake_node", str(tmp_path), str(port),
                             str(info_port), str(max_restarts)], cwd=ROOT, start_new_session=True)
    info_url = f"http://127.0.0.1:{info_port}"
    info = _wait_ready(info_url)
    yield proc, info_url, info
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    _kill_quietly(info["pid"])


def _wait_ready(info_url: str) -> dict:
    deadline_s = time.monotonic() + 30
    while time.monotonic() < deadline_s:
        try:
            if httpx.get(f"{info_url}/health", timeout=1).status_code == 200:
                return httpx.get(f"{info_url}/info", timeout=1).json()
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("fake node did not become ready")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _gone_within(pid: int, timeout_s: float) -> bool:
    deadline_s = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline_s:
        time.sleep(0.05)
    return not _alive(pid)


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_info_reports_role_engine_and_kv_bytes(node):
    _, _, info = node
    assert info["role"] == "decode" and info["engine_ready"] is True and info["transport"] == "none"
    assert info["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 4  # layers x kv_heads x head_dim x fp32
    assert _alive(info["pid"])


def test_sigterm_stops_the_engine_then_the_supervisor(node):
    proc, _, info = node
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert _gone_within(info["pid"], 5)


def test_killed_supervisor_takes_its_engine_with_it(node):
    proc, _, info = node
    proc.kill()
    proc.wait(timeout=10)
    assert _gone_within(info["pid"], 10), "the engine must not outlive its supervisor"


def test_dead_engine_stops_the_supervisor_with_an_error(node):
    proc, _, info = node
    os.kill(info["pid"], signal.SIGKILL)
    assert proc.wait(timeout=30) == 1


@pytest.mark.parametrize("node", [1], indirect=True)
def test_a_dead_engine_is_restarted_when_so_configured_then_the_node_gives_up(node):
    proc, info_url, info = node
    os.kill(info["pid"], signal.SIGKILL)
    deadline_s = time.monotonic() + 30
    restarted = info
    while restarted["pid"] == info["pid"] or not restarted["engine_ready"]:
        assert time.monotonic() < deadline_s and proc.poll() is None, "engine not restarted"
        time.sleep(0.2)
        restarted = httpx.get(f"{info_url}/info", timeout=2).json()
    assert _alive(restarted["pid"]) and not _alive(info["pid"])
    assert httpx.get(f"{info_url}/health", timeout=2).status_code == 200
    os.kill(restarted["pid"], signal.SIGKILL)  # the one restart is used up
    assert proc.wait(timeout=30) == 1


def test_repin_moves_stray_threads_of_named_processes_back(tmp_path):
    from core import host

    code = ("import ctypes, os, threading, time\n"
            "ctypes.CDLL('libc.so.6').prctl(15, b'VLLM::Worker')\n"  # PR_SET_NAME, like vLLM's workers
            "os.sched_setaffinity(0, {1})\n"
            "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
            "open(os.environ['READY'], 'w').close(); time.sleep(60)\n")
    ready = tmp_path / "ready"
    parent = subprocess.Popen(["sh", "-c", f'{sys.executable} -c "$CODE"'], env={**os.environ, "CODE": code,
                                                                                "READY": str(ready)})
    try:
        deadline_s = time.monotonic() + 20
        while not ready.exists() and time.monotonic() < deadline_s:
            time.sleep(0.05)
        assert host.repin_threads(parent.pid, {0}, "VLLM::Worker") == 2  # main thread + the extra one
        worker = [p for p in host.descendants(parent.pid) if p != parent.pid][0]
        for task in Path(f"/proc/{worker}/task").iterdir():
            assert os.sched_getaffinity(int(task.name)) == {0}
        assert host.repin_threads(parent.pid, {0}, "VLLM::Worker") == 0
        assert host.parse_cores("0,2-3") == {0, 2, 3}
    finally:
        family = host.descendants(parent.pid)
        for pid in family:
            _kill_quietly(pid)
        parent.wait()
