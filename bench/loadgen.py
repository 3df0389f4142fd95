"""The async load runner: warm-up, then prompts sent at a fixed concurrency or as a Poisson process.

Bounded in count (one request per prompt) and in time (`max_duration_s` covers warm-up and the run:
no request starts after it and requests still in flight are cut off and recorded as `cancelled`).
Each request is timed by `bench.client`; the numbers are summarized by `bench.metrics`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

import httpx

from bench.client import COMPLETIONS, ENDPOINTS, build_payload, discover_model, send_streaming
from bench.datasets import Prompt
from bench.metrics import RequestResult
from router.upstream import NODE_KEEPALIVE_S

log = logging.getLogger(__name__)

OnResult = Callable[[RequestResult], None]
Send = Callable[[Prompt], Awaitable[RequestResult]]


@dataclass(frozen=True)
class LoadSettings:
    """How to drive the endpoint. `concurrency` alone: closed loop with that many requests in flight.
    `request_rate_per_s`: Poisson arrivals (math.inf: all at once), capped by `concurrency` if given."""

    base_url: str
    endpoint: str = COMPLETIONS
    model: str | None = None
    concurrency: int | None = None
    request_rate_per_s: float | None = None
    timeout_s: float = 120.0
    max_duration_s: float = 600.0
    ignore_eos: bool = False
    temperature: float = 0.0
    seed: int = 0
    api_key: str | None = None

    def __post_init__(self) -> None:
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {', '.join(ENDPOINTS)}, got {self.endpoint!r}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.request_rate_per_s is not None and not self.request_rate_per_s > 0:
            raise ValueError(f"request rate must be positive, got {self.request_rate_per_s}")
        if not (self.timeout_s > 0 and self.max_duration_s > 0):
            raise ValueError("timeout_s and max_duration_s must be positive")
        object.__setattr__(self, "base_url", normalize_base_url(self.base_url))


@dataclass(frozen=True)
class LoadRun:
    """What a run produced. `duration_s` spans the measured requests only (not the warm-up)."""

    model: str
    results: tuple[RequestResult, ...]
    warmup_results: tuple[RequestResult, ...]
    duration_s: float
    num_not_started: int


def normalize_base_url(url: str) -> str:
    """`http://h:8000/v1/` → `http://h:8000`; endpoints are appended to it."""
    base = url.strip().rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ValueError(f"URL must start with http:// or https://, got {url!r}")
    return base[: -len("/v1")] if base.endswith("/v1") else base


async def run_load(settings: LoadSettings, prompts: Sequence[Prompt], warmup_prompts: Sequence[Prompt] = (),
                   on_result: OnResult | None = None) -> LoadRun:
    """Run warm-up (not counted), then the measured prompts. `on_result` sees each measured result."""
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    # idle connections dropped before a vLLM server (5 s) would close them under a reused request
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=settings.concurrency or 100,
                          keepalive_expiry=NODE_KEEPALIVE_S)
    async with httpx.AsyncClient(timeout=httpx.Timeout(settings.timeout_s), headers=headers,
                                 limits=limits) as client:
        deadline_s = time.perf_counter() + settings.max_duration_s
        model = settings.model or await discover_model(client, settings.base_url)
        log.info("benchmarking model %s at %s%s", model, settings.base_url, settings.endpoint)
        warmup, _ = await _closed_loop(_sender(client, settings, model, time.perf_counter(), deadline_s),
                                       warmup_prompts, settings.concurrency or 1, deadline_s, None)
        run_start_s = time.perf_counter()
        send = _sender(client, settings, model, run_start_s, deadline_s)
        if settings.request_rate_per_s is not None:
            results, not_started = await _open_loop(send, prompts, settings, deadline_s, on_result)
        else:
            results, not_started = await _closed_loop(send, prompts, settings.concurrency or 1, deadline_s,
                                                      on_result)
        duration_s = time.perf_counter() - run_start_s
    if not_started:
        log.warning("%d requests not started: --max-duration-s of %s s reached", not_started,
                    settings.max_duration_s)
    return LoadRun(model, tuple(results), tuple(warmup), duration_s, not_started)


def _sender(client: httpx.AsyncClient, settings: LoadSettings, model: str, run_start_s: float,
            deadline_s: float) -> Send:
    url = settings.base_url + settings.endpoint

    async def send(prompt: Prompt) -> RequestResult:
        payload = build_payload(settings.endpoint, model, prompt, ignore_eos=settings.ignore_eos,
                                temperature=settings.temperature)
        return await send_streaming(client, url, payload, timeout_s=settings.timeout_s,
                                    run_start_s=run_start_s, cutoff_s=deadline_s)

    return send


async def _closed_loop(send: Send, prompts: Sequence[Prompt], concurrency: int, deadline_s: float,
                       on_result: OnResult | None) -> tuple[list[RequestResult], int]:
    """`concurrency` workers, each sending its next prompt as soon as its last request finished."""
    results: list[RequestResult | None] = [None] * len(prompts)
    pending = iter(range(len(prompts)))

    async def worker() -> None:
        for index in pending:  # shared iterator: each index is taken by exactly one worker
            if time.perf_counter() >= deadline_s:
                return
            results[index] = await send(prompts[index])
            if on_result:
                on_result(results[index])

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(prompts)))))
    done = [result for result in results if result is not None]
    return done, len(prompts) - len(done)


async def _open_loop(send: Send, prompts: Sequence[Prompt], settings: LoadSettings, deadline_s: float,
                     on_result: OnResult | None) -> tuple[list[RequestResult], int]:
    """Poisson arrivals at `request_rate_per_s`; at most `concurrency` in flight when that is set."""
    rate = settings.request_rate_per_s or math.inf
    rng = random.Random(settings.seed)
    limiter = asyncio.Semaphore(settings.concurrency) if settings.concurrency else None

    async def one(prompt: Prompt) -> RequestResult | None:
        if limiter is None:
            result = await send(prompt)
        else:
            async with limiter:
                if time.perf_counter() >= deadline_s:
                    return None
                result = await send(prompt)
        if on_result:
            on_result(result)
        return result

    tasks: list[asyncio.Task[RequestResult | None]] = []
    arrival_s = time.perf_counter()
    for prompt in prompts:
        if arrival_s >= deadline_s:
            break
        await asyncio.sleep(max(0.0, arrival_s - time.perf_counter()))
        tasks.append(asyncio.create_task(one(prompt)))
        if not math.isinf(rate):
            arrival_s += rng.expovariate(rate)
    done = [result for result in await asyncio.gather(*tasks) if result is not None]
    return done, len(prompts) - len(done)
