"""An FP8 KV cache end to end: both nodes started with `--kv-cache-dtype fp8` report 11,520 KV bytes per token
(SmolLM2-135M: a quarter of fp32's 46,080), and over `tcp` and over `nixl` a disaggregated request equals the
colocated one (the decode node alone, same FP8 cache) token for token, moving FP8 bytes.

This test starts its own two nodes (`disagg prefill` / `disagg decode`, no router: it drives vLLM's P/D
protocol itself with `bench.quality`), one transport after the other, because the session's clusters run
the model's own KV dtype (an FP8 cache changes every answer, so it cannot share them); it stops the
session's cluster first (one cluster at a time on this box). Skipped where vLLM cannot keep FP8 KV
(`node.kv_cache_dtype.fp8_kv_cache_support`), and for nixl where NIXL's own loopback fails on the host."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from bench.quality import Comparison, Nodes, colocated, disaggregated
from bench.quality_prompts import prompt_set
from core.host import detect_platform
from node.kv_cache_dtype import fp8_kv_cache_support
from tests.integration import vllm_metrics
from tests.integration.cluster_manager import _processes_with
from tests.support.threaded_server import free_port
from transport import registry
from transport.base import KvLink

pytestmark = pytest.mark.integration
FP8_KV_BYTES_PER_TOKEN = 2 * 30 * 3 * 64 * 1
BLOCK_TOKENS = 128
PULLED = {"tcp": "vllm:disagg_tcp_kv_pulled_bytes_total", "nixl": "vllm:nixl_bytes_transferred_sum"}
START_TIMEOUT_S = 600.0


def _start(role: str, transport: str, core: str, log_dir) -> tuple[subprocess.Popen, int]:
    port, kv_port = free_port(with_next=True), free_port()  # /info on port + 1
    argv = [sys.executable, "-m", "disagg", role, "--transport", transport, "--port", str(port), "--info-port",
            str(port + 1), "--kv-port", str(kv_port), "--cpu-cores", core, "--kv-cache-dtype", "fp8",
            "--no-prefix-caching", "--kv-lease-s", "20"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISAGG_")}
    log = open(log_dir / f"{role}-{transport}.log", "wb")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True), port


def _wait_healthy(proc: subprocess.Popen, port: int) -> None:
    deadline_s = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline_s:
        assert proc.poll() is None, f"node on port {port} exited with {proc.returncode}"
        try:
            if httpx.get(f"http://127.0.0.1:{port + 1}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise AssertionError(f"node on port {port} not healthy after {START_TIMEOUT_S} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("transport", ["tcp", "nixl"])
def test_fp8_kv_cache_disagg_equals_colocated(transport, clusters, tmp_path, monkeypatch):
    supported, why = fp8_kv_cache_support(detect_platform())
    if not supported:
        pytest.skip(f"no FP8 KV cache here: {why}")
    if transport == "nixl":
        pytest.importorskip("nixl")
        nixl = registry.get("nixl")
        for key, value in nixl.env(KvLink(role="decode", peer_is_local=True)).items():  # the nodes' UCX settings
            if key.startswith("UCX_"):
                monkeypatch.setenv(key, value)
        probe = nixl.loopback(2**20, 1)  # NIXL's UCX backend in a child, as doctor runs it
        if probe is None or probe.get("status") != "ok":
            pytest.skip(f"NIXL cannot move KV on this host now with the nodes' UCX settings (doctor's loopback: "
                        f"{probe}); nothing FP8 about it")
    clusters.stop()  # one cluster at a time
    (prefill, prefill_port), (decode, decode_port) = (_start("prefill", transport, "0", tmp_path),
                                                      _start("decode", transport, "1", tmp_path))
    try:
        _wait_healthy(prefill, prefill_port)
        _wait_healthy(decode, decode_port)
        for port in (prefill_port, decode_port):
            info = httpx.get(f"http://127.0.0.1:{port + 1}/info", timeout=10).json()
            assert info["kv_bytes_per_token"] == FP8_KV_BYTES_PER_TOKEN, info
        decode_url = f"http://127.0.0.1:{decode_port}"
        model = httpx.get(f"{decode_url}/v1/models", timeout=10).json()["data"][0]["id"]
        nodes = Nodes(f"http://127.0.0.1:{prefill_port}", decode_url, model)
        before = vllm_metrics.read(decode_url)
        prompt_tokens = 0
        with httpx.Client() as client:
            for prompt in prompt_set(4):
                reference = colocated(client, nodes, prompt.text, 16, f"fp8-{transport}-coloc")
                pulled = disaggregated(client, nodes, prompt.text, 16, None, f"fp8-{transport}-pd")
                comparison = Comparison.of(reference, pulled)
                print(f"fp8 {transport} prompt {prompt.index} ({reference.prompt_tokens} tokens): {comparison}")
                assert comparison.identical, (prompt.index, comparison)
                prompt_tokens += reference.prompt_tokens
        time.sleep(2.0)
        moved = vllm_metrics.delta(before, vllm_metrics.read(decode_url), PULLED[transport])
        print(f"fp8 {transport}: {moved:.0f} KV bytes moved for {prompt_tokens} prompt tokens")
        assert (prompt_tokens - 4 * BLOCK_TOKENS) * FP8_KV_BYTES_PER_TOKEN <= moved, moved
        assert moved <= (prompt_tokens + 4 * BLOCK_TOKENS) * FP8_KV_BYTES_PER_TOKEN, moved
    finally:
        _stop(decode)
        _stop(prefill)
    assert not _processes_with(f"--port {prefill_port} ", f"--port {decode_port} ")
