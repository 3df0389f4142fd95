"""`disagg bench router`: what the router itself costs, against stub nodes, in one run.

Stub vLLM servers (`bench.stub_vllm`: a prefill and a decode node that answer at once, no model) are served
in child processes; a colocated and a disaggregated router are started in front of them (`disagg router`).
One streaming client (aiohttp, in this process) then sends the same completions request to

- the decode stub directly (what a client of vLLM alone sees),
- the colocated router (one upstream call per request),
- the disaggregated router (prefill, then decode: two upstream calls),

first one request at a time (`requests_c1`, after a warm-up): the per-request time to first token and to the
last byte, medians; the router's overhead is its median minus the stub's. Then `concurrency` streams at once
for `duration_s` (bounded in count too): requests per second, and the ratio to the stub's. All processes share
this host's cores, so the ratio also says how much CPU the router takes from the nodes and the client.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import httpx

from bench.local_cluster import free_ports
from core.host import die_with_parent, terminate

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RouterBenchSettings:
    """What to measure: requests of `max_tokens` streamed tokens; `requests_c1` one at a time (after `warmup`);
    then `concurrency` at once for `duration_s`, at most `max_requests`."""

    max_tokens: int = 16
    warmup: int = 20
    requests_c1: int = 200
    concurrency: int = 64
    duration_s: float = 10.0
    max_requests: int = 20_000


@dataclass
class TargetResult:
    """One target's figures (seconds, requests per second)."""

    name: str
    ttft_s_median: float = 0.0
    e2e_s_median: float = 0.0
    rps: float = 0.0
    failures: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def run(settings: RouterBenchSettings) -> list[TargetResult]:
    """Start the stubs and routers, measure each target, stop everything."""
    with _servers() as urls:
        results = []
        for name, url in urls.items():
            log.info("measuring %s (%s)", name, url)
            results.append(asyncio.run(_measure(name, url, settings)))
        return results


def overheads(results: list[TargetResult]) -> dict[str, dict[str, float]]:
    """Per router: its median TTFT and end-to-end minus the stub's (ms) and its throughput over the stub's."""
    stub = results[0]
    return {r.name: {"ttft_overhead_ms": (r.ttft_s_median - stub.ttft_s_median) * 1e3,
                     "e2e_overhead_ms": (r.e2e_s_median - stub.e2e_s_median) * 1e3,
                     "throughput_ratio": r.rps / stub.rps if stub.rps else 0.0} for r in results[1:]}


@contextmanager
def _servers() -> Iterator[dict[str, str]]:
    ports = {name: free_ports(1) for name in ("prefill", "decode", "colocated", "disagg")}
    with ExitStack() as stack:
        for role in ("prefill", "decode"):
            stack.enter_context(_process([sys.executable, "-m", "bench.stub_vllm", role, str(ports[role])]))
        prefill, decode = (f"http://127.0.0.1:{ports[r]}" for r in ("prefill", "decode"))
        for mode in ("colocated", "disagg"):
            argv = [sys.executable, "-m", "disagg", "--log-level", "WARNING", "router", "--mode", mode,
                    "--decode", decode, "--port", str(ports[mode])]
            stack.enter_context(_process(argv + (["--prefill", prefill] if mode == "disagg" else [])))
        urls = {"stub": decode, "colocated router": f"http://127.0.0.1:{ports['colocated']}",
                "disagg router": f"http://127.0.0.1:{ports['disagg']}"}
        for url in urls.values():
            _wait_ready(url)
        yield urls


@contextmanager
def _process(argv: list[str]) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=die_with_parent)
    try:
        yield proc
    finally:
        terminate(proc, 10)


def _wait_ready(url: str) -> None:
    deadline_s = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline_s:
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become healthy in {READY_TIMEOUT_S:.0f} s")


async def _measure(name: str, url: str, settings: RouterBenchSettings) -> TargetResult:
    import aiohttp

    body = {"model": "stub-model", "prompt": "the router under test", "max_tokens": settings.max_tokens,
            "temperature": 0, "stream": True}
    result = TargetResult(name)
    connector = aiohttp.TCPConnector(limit=settings.concurrency * 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(settings.warmup):
            await _one(session, url, body)
        samples = [await _one(session, url, body) for _ in range(settings.requests_c1)]
        ok = [s for s in samples if s is not None]
        result.failures += len(samples) - len(ok)
        if ok:
            result.ttft_s_median = statistics.median(t for t, _ in ok)
            result.e2e_s_median = statistics.median(e for _, e in ok)
        result.rps, failed = await _throughput(session, url, body, settings)
        result.failures += failed
    return result


async def _one(session: Any, url: str, body: dict[str, Any]) -> tuple[float, float] | None:
    """(seconds to the first data chunk, seconds to [DONE]) of one streamed request; None if it failed."""
    started_s = time.perf_counter()
    first_s = None
    async with session.post(f"{url}/v1/completions", json=body) as resp:
        if resp.status != 200:
            await resp.read()
            return None
        async for line in resp.content:
            if not line.startswith(b"data:"):
                continue
            if first_s is None:
                first_s = time.perf_counter() - started_s
            if line.strip() == b"data: [DONE]":
                return first_s, time.perf_counter() - started_s
    return None


async def _throughput(session: Any, url: str, body: dict[str, Any], settings: RouterBenchSettings) -> tuple[float, int]:
    """(completed requests per second, failures) with `concurrency` workers for `duration_s`."""
    deadline_s = time.perf_counter() + settings.duration_s
    counts = {"done": 0, "failed": 0, "started": 0}

    async def worker() -> None:
        while time.perf_counter() < deadline_s and counts["started"] < settings.max_requests:
            counts["started"] += 1
            counts["done" if await _one(session, url, body) is not None else "failed"] += 1

    started_s = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(settings.concurrency)))
    return counts["done"] / (time.perf_counter() - started_s), counts["failed"]


def as_json(settings: RouterBenchSettings, results: list[TargetResult]) -> dict[str, Any]:
    return {"settings": asdict(settings), "targets": [asdict(r) for r in results], "routers": overheads(results)}
