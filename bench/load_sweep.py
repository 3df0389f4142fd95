"""`bench compare --load`'s measurement: one setup (an OpenAI endpoint) driven at each request rate of a sweep,
with Poisson arrivals and the same workload per rate for every setup, summarized against SLOs.

Per rate: a fresh workload (seed + rate index, so no prompt repeats across rates), sent by `bench.loadgen`
as a Poisson process at that rate (seeded arrivals), streamed, `ignore_eos`, temperature 0; the router's
`disagg_router_decisions_total` read before and after (a router in disagg mode; others have none). The point's
record (`summarize_point`): requests, failures, achieved requests/s, goodput (requests meeting every SLO per
second of the run, `bench.metrics.meets_limits`), SLO attainment, TTFT/TPOT/ITL/E2E percentiles (all and per
request kind), the worst inter-token gap, KV bytes per request (the router's Server-Timing; 0 for requests
that moved none) and the decisions. Progress is logged as results arrive.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.load_workload import Workload
from bench.loadgen import LoadSettings, run_load
from bench.metrics import RequestResult, meets_limits, summarize

log = logging.getLogger(__name__)
DECISIONS = "disagg_router_decisions_total"
PROGRESS_EVERY_S = 10.0


@dataclass(frozen=True)
class SweepSettings:
    """What every setup is driven with."""

    rates_per_s: tuple[float, ...]
    requests_per_rate: int
    slo_ms: Mapping[str, float]  # {"ttft_ms": ..., "tpot_ms": ...}
    num_warmup: int = 2
    seed: int = 0
    timeout_s: float = 300.0
    model: str | None = None

    def __post_init__(self) -> None:
        if not self.rates_per_s or min(self.rates_per_s) <= 0:
            raise ValueError(f"request rates must be positive, got {self.rates_per_s}")
        if self.requests_per_rate < 1 or self.num_warmup < 0 or self.timeout_s <= 0:
            raise ValueError("requests_per_rate >= 1, num_warmup >= 0 and timeout_s > 0 are required")

    def max_duration_s(self, rate_per_s: float) -> float:
        """A bound on one rate's run: twice its arrivals' expected span, plus one request's timeout."""
        return 2 * self.requests_per_rate / rate_per_s + self.timeout_s


@dataclass
class Progress:
    """Logs a setup's progress at one rate: results so far, failures, SLO misses, elapsed time."""

    label: str
    total: int
    slo_ms: Mapping[str, float]
    done: int = 0
    failed: int = 0
    missed: int = 0
    started_s: float = field(default_factory=time.monotonic)
    last_log_s: float = 0.0

    def __call__(self, result: RequestResult) -> None:
        self.done += 1
        self.failed += not result.ok
        self.missed += result.ok and not meets_limits(result, self.slo_ms)
        now_s = time.monotonic()
        if self.done == self.total or now_s - self.last_log_s >= PROGRESS_EVERY_S:
            self.last_log_s = now_s
            log.info("%s: %d/%d done, %d failed, %d missed an SLO, %.0f s", self.label, self.done, self.total,
                     self.failed, self.missed, now_s - self.started_s)


async def router_decisions(client: httpx.AsyncClient, url: str) -> dict[str, float]:
    """{"decision/reason": count} from a router's /metrics; {} when it has none (or no /metrics)."""
    try:
        resp = await client.get(f"{url}/metrics", timeout=10.0)
        resp.raise_for_status()
    except httpx.HTTPError:
        return {}
    lines = [line for line in resp.text.splitlines() if line.startswith(DECISIONS)]
    found: dict[str, float] = {}
    for family in text_string_to_metric_families("\n".join(lines) + "\n"):
        for sample in family.samples:
            if sample.name == DECISIONS:
                key = f"{sample.labels['decision']}/{sample.labels['reason']}"
                found[key] = found.get(key, 0.0) + sample.value
    return found


def _delta(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, int]:
    return {key: int(value - before.get(key, 0.0)) for key, value in sorted(after.items())
            if value - before.get(key, 0.0) > 0}


async def run_setup(name: str, url: str, settings: SweepSettings, workloads: Sequence[Workload],
                    warmup: Workload) -> list[dict[str, Any]]:
    """Every rate of the sweep against `url`; one point per rate (warm-up before the first)."""
    points = []
    if warmup.prompts:  # one at a time, before any rate (and before the decisions are first read)
        await run_load(LoadSettings(base_url=url, model=settings.model, concurrency=1, timeout_s=settings.timeout_s,
                                    max_duration_s=settings.timeout_s * len(warmup.prompts), ignore_eos=True),
                       warmup.prompts)
    async with httpx.AsyncClient() as client:
        for index, (rate, workload) in enumerate(zip(settings.rates_per_s, workloads)):
            before = await router_decisions(client, url)
            load = LoadSettings(base_url=url, model=settings.model, request_rate_per_s=rate,
                                timeout_s=settings.timeout_s, max_duration_s=settings.max_duration_s(rate),
                                ignore_eos=True, temperature=0.0, seed=settings.seed + index)
            label = f"{name} @ {rate:g} req/s"
            log.info("%s: %d requests (%s)", label, len(workload.prompts), url)
            run = await run_load(load, workload.prompts, on_result=Progress(label, len(workload.prompts),
                                                                            settings.slo_ms))
            decisions = _delta(await router_decisions(client, url), before)
            points.append(summarize_point(rate, run.results, run.duration_s, workload.kinds, settings.slo_ms,
                                          decisions))
            log.info("%s: goodput %.3f req/s (%.0f %% within the SLOs), TPOT p50 %s ms", label,
                     points[-1]["goodput_per_s"], 100 * points[-1]["slo_attainment"],
                     _fmt(points[-1]["tpot_ms"]["p50"]))
    return points


def summarize_point(rate_per_s: float, results: Sequence[RequestResult], duration_s: float,
                    kinds: Sequence[str], slo_ms: Mapping[str, float],
                    decisions: Mapping[str, int] | None = None) -> dict[str, Any]:
    """One rate's record (module docstring). `kinds[i]` is the kind of `results[i]`'s request."""
    summary = summarize(results, duration_s, slo_ms)
    ok = [r for r in results if r.ok]
    kv = [r.kv_bytes or 0 for r in ok]
    by_kind = {}
    for kind in sorted(set(kinds[:len(results)])):
        mine = [r for r, k in zip(results, kinds) if k == kind]
        part = summarize(mine, duration_s, slo_ms)
        by_kind[kind] = {"num_requests": len(mine), "num_good": part["goodput"]["num_good"],
                         **{key: part[key] for key in ("ttft_ms", "tpot_ms", "itl_ms")}}
    return {
        "rate_per_s": rate_per_s, "num_requests": summary["num_requests"], "num_ok": summary["num_ok"],
        "failures": summary["failures"], "num_cancelled": summary["num_cancelled"], "duration_s": duration_s,
        "requests_per_s": summary["requests_per_s"], "goodput_per_s": summary["goodput"]["requests_per_s"],
        "num_good": summary["goodput"]["num_good"], "slo_attainment": summary["goodput"]["fraction"],
        "ttft_ms": summary["ttft_ms"], "tpot_ms": summary["tpot_ms"], "itl_ms": summary["itl_ms"],
        "e2e_ms": summary["e2e_ms"], "max_itl_ms": max((gap * 1000 for r in ok for gap in r.itl_s), default=None),
        "kv_bytes_per_request": statistics.fmean(kv) if kv else None,
        "kv_share": sum(1 for b in kv if b) / len(kv) if kv else None,
        "decisions": dict(decisions or {}), "by_kind": by_kind,
        "requests": [{**r.to_json(), "kind": k} for r, k in zip(results, kinds)],
    }


def run_setup_sync(name: str, url: str, settings: SweepSettings, workloads: Sequence[Workload],
                   warmup: Workload) -> dict[str, Any]:
    """`run_setup` from synchronous code, timed: the setup's record for results.json."""
    started_s = time.monotonic()
    points = asyncio.run(run_setup(name, url, settings, workloads, warmup))
    return {"name": name, "url": url, "duration_s": time.monotonic() - started_s, "points": points}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"
