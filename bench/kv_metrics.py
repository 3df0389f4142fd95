"""KV transfer time and bytes, read from the decode node's vLLM Prometheus metrics as deltas.

Each transport's connector exports a time histogram (seconds per transfer: `_sum`, `_count`) and the
bytes moved, under the names its registered transport declares (`transport.base.Transport.metric_names`). Reading them before and after a request gives its transfers: time = Δtime_sum / Δcount,
bytes = Δbytes / Δcount; `combine` pools the requests of one prompt length. Also read: the decode node's
prompt tokens by source, which shows whether prompts were pulled, computed locally or hit its prefix cache.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import httpx
from prometheus_client.parser import text_string_to_metric_families

from transport import registry
from transport.base import TransferMetricNames

log = logging.getLogger(__name__)

Snapshot = dict[str, float]
PROMPT_TOKENS_BY_SOURCE = "vllm:prompt_tokens_by_source_total"


def transfer_metrics() -> dict[str, TransferMetricNames]:
    """Each registered transport's transfer metric names (`Transport.metric_names`), by transport name, in
    registry order; transports without a connector (`none`) have none."""
    return {t.name: t.metric_names for t in registry.all_transports() if t.metric_names is not None}


@dataclass(frozen=True)
class TransferDelta:
    """Transfers seen between two snapshots; `connector` names the metric family they came from."""

    connector: str
    count: int
    time_s: float
    kv_bytes: float
    prompt_tokens_by_source: Mapping[str, float]

    @property
    def mean_time_ms(self) -> float | None:
        return self.time_s / self.count * 1000 if self.count else None

    @property
    def mean_bytes(self) -> float | None:
        return self.kv_bytes / self.count if self.count else None



def parse(text: str) -> Snapshot:
    """Prometheus text → {sample name (+ `[source]` when labelled by source): value summed over labels}."""
    values: Snapshot = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name
            if "source" in sample.labels:
                key += f"[{sample.labels['source']}]"
            values[key] = values.get(key, 0.0) + sample.value
    return values


async def read(client: httpx.AsyncClient, vllm_url: str) -> Snapshot:
    """The server's current metrics (`GET {vllm_url}/metrics`)."""
    response = await client.get(f"{vllm_url.rstrip('/')}/metrics")
    response.raise_for_status()
    return parse(response.text)


def delta(before: Snapshot, after: Snapshot, transport: str) -> TransferDelta:
    """Transfers between two snapshots, read with `transport`'s metric names. An unknown transport name (a
    mode named otherwise) uses whichever registered connector moved data, else the first."""
    metrics = transfer_metrics()
    candidates = [transport] if transport in metrics else list(metrics)
    best = candidates[0]
    for name in candidates:
        if _diff(before, after, metrics[name].time_count) > 0:
            best = name
            break
    names = metrics[best]
    sources = {key[len(PROMPT_TOKENS_BY_SOURCE) + 1:-1]: _diff(before, after, key)
               for key in after if key.startswith(PROMPT_TOKENS_BY_SOURCE + "[")}
    return TransferDelta(connector=best, count=round(_diff(before, after, names.time_count)),
                         time_s=_diff(before, after, names.time_sum), kv_bytes=_diff(before, after, names.bytes_sum),
                         prompt_tokens_by_source=sources)


def _diff(before: Snapshot, after: Snapshot, key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


async def settle(client: httpx.AsyncClient, vllm_url: str, before: Snapshot, transport: str,
                 expected_count: int, timeout_s: float = 5.0) -> TransferDelta:
    """Read until `expected_count` transfers show up (the engine publishes stats a step late) or time out."""
    started_s = time.monotonic()
    while True:
        found = delta(before, await read(client, vllm_url), transport)
        if found.count >= expected_count or time.monotonic() - started_s >= timeout_s:
            log.debug("%s: %d transfers after %.2f s", transport, found.count, time.monotonic() - started_s)
            if found.count < expected_count:
                log.warning("%s: %d KV transfers seen on %s, expected %d", transport, found.count, vllm_url,
                            expected_count)
            return found
        await asyncio.sleep(0.25)


def combine(deltas: Sequence[TransferDelta]) -> dict[str, Any]:
    """The transfers of several requests: totals, mean (Δsum / Δcount), median, max, and one point per request."""
    count = sum(found.count for found in deltas)
    time_s, kv_bytes = sum(found.time_s for found in deltas), sum(found.kv_bytes for found in deltas)
    points = [{"bytes": found.mean_bytes, "time_ms": found.mean_time_ms} for found in deltas if found.count]
    sources: dict[str, float] = {}
    for found in deltas:
        for source, tokens in found.prompt_tokens_by_source.items():
            sources[source] = sources.get(source, 0.0) + tokens
    times_ms = [point["time_ms"] for point in points]
    return {"source": "vllm_metrics", "connector": deltas[0].connector if deltas else None, "count": count,
            "time_ms_mean": time_s / count * 1000 if count else None, "bytes_mean": kv_bytes / count if count else None,
            "time_ms_p50": statistics.median(times_ms) if times_ms else None,
            "time_ms_max": max(times_ms) if times_ms else None, "per_request": points,
            "prompt_tokens_by_source": sources}
