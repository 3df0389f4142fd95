"""One real local cluster per test session: `disagg up --local` with a colocated baseline router.

Both vLLM servers run without prefix caching, so a disaggregated request must pull its KV from the
prefill node and a colocated request must compute it: the comparison cannot be served from a cache.
Without vLLM installed these tests skip, unless DISAGG_REQUIRE_ENGINE=1 (set by .ci/run) makes that an error.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.threaded_server import free_port

STARTUP_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Cluster:
    router_url: str
    baseline_url: str
    prefill_vllm_url: str
    decode_vllm_url: str
    model_name: str
    model_dir: Path
    log_dir: Path


def _engine_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    if not _engine_available():
        if os.environ.get("DISAGG_REQUIRE_ENGINE") == "1":
            pytest.fail("vLLM is not installed but DISAGG_REQUIRE_ENGINE=1")
        pytest.skip("vLLM is not installed (run deploy/install.sh)")
    from disagg.model import ensure_default_model

    model_dir = ensure_default_model()
    log_dir = tmp_path_factory.mktemp("cluster-logs")
    ports = {name: free_port() for name in ("router", "baseline")}
    base = 18000 + (os.getpid() % 500) * 4  # vLLM + info ports: base, base+1 (prefill), base+2, base+3 (decode)
    kv_base = 25000 + (os.getpid() % 500) * 2
    argv = [sys.executable, "-m", "disagg", "up", "--local", "--model", str(model_dir),
            "--port", str(ports["router"]), "--baseline-port", str(ports["baseline"]),
            "--prefill-port", str(base), "--decode-port", str(base + 2), "--kv-port-base", str(kv_base),
            "--no-prefix-caching", "--log-dir", str(log_dir)]
    up = subprocess.Popen(argv, stdout=open(log_dir / "up.log", "wb"), stderr=subprocess.STDOUT,
                          start_new_session=True)
    cluster = Cluster(router_url=f"http://127.0.0.1:{ports['router']}",
                      baseline_url=f"http://127.0.0.1:{ports['baseline']}",
                      prefill_vllm_url=f"http://127.0.0.1:{base}", decode_vllm_url=f"http://127.0.0.1:{base + 2}",
                      model_name=model_dir.name, model_dir=model_dir, log_dir=log_dir)
    try:
        _wait_ready(up, cluster)
        yield cluster
    finally:
        _stop(up, log_dir)
    left = _processes_with(f"--port {base} ", f"--port {base + 2} ", str(log_dir))
    assert not left, f"processes left behind after disagg up stopped: {left}"


def _wait_ready(up: subprocess.Popen, cluster: Cluster) -> None:
    deadline_s = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline_s:
        if up.poll() is not None:
            pytest.fail(f"disagg up exited with {up.returncode}:\n{(cluster.log_dir / 'up.log').read_text()[-3000:]}")
        try:
            if all(httpx.get(f"{u}/health", timeout=2).status_code == 200
                   for u in (cluster.router_url, cluster.baseline_url)):
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    pytest.fail(f"cluster not ready after {STARTUP_TIMEOUT_S} s")


def _processes_with(*needles: str) -> list[str]:
    """Command lines of live processes containing any needle."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and any(n in text for n in needles):
            found.append(text[:200])
    return found


def _stop(up: subprocess.Popen, log_dir: Path) -> None:
    if up.poll() is None:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
