"""`bench compare`'s measurement: the same workload against the colocated baseline and each disaggregated mode.

Per mode (a `Target`), per prompt length: sequential streamed requests (concurrency 1, temperature 0,
`ignore_eos`, `output_len` tokens) timed by `bench.client`, after a warm-up per mode. For disaggregated
modes the decode node's vLLM metrics are read before and after each request (`bench.kv_metrics`), and
each response's Server-Timing `kv;desc="N bytes"` is kept as a fallback for the bytes. Prompts are
random token sequences with a different seed per mode and length, so no prompt is served from a cache.
The output is the `modes` part of results.json; `bench.report` and `bench.plots` turn it into a report.
"""

from __future__ import annotations

import logging
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import httpx

from bench import datasets, kv_metrics
from bench.client import COMPLETIONS, build_payload, discover_model, send_streaming
from bench.loadgen import normalize_base_url
from bench.metrics import RequestResult, distribution_ms, summarize

log = logging.getLogger(__name__)

COLOCATED = "colocated"
DEFAULT_PROMPT_LENS = (128, 512, 1024, 2048, 4096)
_KV_DESC = re.compile(r'(?:^|,)\s*kv\s*;[^,]*?desc="?\s*(\d+)\s*bytes', re.IGNORECASE)
_SEED_STRIDE = 7919  # seeds of different modes never coincide for lengths below this


@dataclass(frozen=True)
class Target:
    """One serving mode to measure: `colocated` or a transport name (`nixl`, `tcp`) for disaggregated."""

    name: str
    url: str
    decode_metrics_url: str | None = None

    @property
    def kind(self) -> str:
        return "colocated" if self.name == COLOCATED else "disagg"


@dataclass(frozen=True)
class CompareSettings:
    """The workload, identical for every mode."""

    prompt_lens: tuple[int, ...] = DEFAULT_PROMPT_LENS
    output_len: int = 100
    num_requests: int = 3
    num_warmup: int = 1
    seed: int = 0
    timeout_s: float = 600.0
    model: str | None = None

    def __post_init__(self) -> None:
        if not self.prompt_lens or min(self.prompt_lens) < 1:
            raise ValueError(f"prompt lengths must be positive, got {self.prompt_lens}")
        if self.output_len < 1 or self.num_requests < 1 or self.num_warmup < 0 or self.timeout_s <= 0:
            raise ValueError("output_len and num_requests >= 1, num_warmup >= 0 and timeout_s > 0 are required")


def cap_prompt_lens(prompt_lens: Sequence[int], max_model_len: int | None, output_len: int) -> tuple[int, ...]:
    """Lengths capped at `max_model_len - output_len`, sorted, duplicates dropped."""
    if max_model_len is None:
        return tuple(sorted(set(prompt_lens)))
    limit = max_model_len - output_len
    if limit < 1:
        raise ValueError(f"output of {output_len} tokens leaves no room in a context of {max_model_len}")
    capped = sorted({min(length, limit) for length in prompt_lens})
    if max(prompt_lens) > limit:
        log.warning("prompt lengths above %d capped (context %d - output %d)", limit, max_model_len, output_len)
    return tuple(capped)


def kv_bytes_from_server_timing(header_values: Sequence[str]) -> int | None:
    """The router's `kv;desc="N bytes"` Server-Timing entry, or None."""
    for header in header_values:
        match = _KV_DESC.search(header)
        if match:
            return int(match.group(1))
    return None


async def max_model_len_of(url: str) -> int | None:
    """`max_model_len` from `GET /v1/models` (vLLM reports it; the router relays it), or None."""
    try:
        async with httpx.AsyncClient(timeout=10.0) as client:
            models = (await client.get(f"{normalize_base_url(url)}/v1/models")).json().get("data") or []
        value = models[0].get("max_model_len")
    except (httpx.HTTPError, ValueError, AttributeError, IndexError, TypeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


class _HeaderLog:
    """Keeps the Server-Timing header values of the last response (requests run one at a time)."""

    def __init__(self) -> None:
        self.last: list[str] = []

    async def __call__(self, response: httpx.Response) -> None:
        self.last = response.headers.get_list("server-timing")


@dataclass
class _Batch:
    """What a run of sequential requests produced: results, router KV bytes, decode-node transfer deltas."""

    results: list[RequestResult] = field(default_factory=list)
    header_kv_bytes: list[int] = field(default_factory=list)
    transfers: list[kv_metrics.TransferDelta] = field(default_factory=list)


@dataclass
class _Session:
    """One mode's HTTP client and request settings; sends requests one at a time until `deadline_s`."""

    client: httpx.AsyncClient
    headers: _HeaderLog
    target: Target
    model: str
    settings: CompareSettings
    deadline_s: float

    async def send_all(self, prompts: Sequence[datasets.Prompt], probe_transfers: bool) -> _Batch:
        """Send `prompts` in order; with `probe_transfers`, read the decode node's metrics around each."""
        batch, url = _Batch(), normalize_base_url(self.target.url) + COMPLETIONS
        metrics_url = self.target.decode_metrics_url if probe_transfers else None
        run_start_s = time.perf_counter()
        for prompt in prompts:
            if time.perf_counter() >= self.deadline_s:
                log.warning("--max-duration-s reached; %d requests not sent", len(prompts) - len(batch.results))
                break
            before = await self._metrics(metrics_url)
            self.headers.last = []
            payload = build_payload(COMPLETIONS, self.model, prompt, ignore_eos=True, temperature=0.0)
            result = await send_streaming(self.client, url, payload, timeout_s=self.settings.timeout_s,
                                          run_start_s=run_start_s, cutoff_s=self.deadline_s)
            batch.results.append(result)
            found = kv_bytes_from_server_timing(self.headers.last)
            if result.ok and found is not None:
                batch.header_kv_bytes.append(found)
            if result.ok and metrics_url and before is not None:
                batch.transfers.append(await kv_metrics.settle(self.client, metrics_url, before, self.target.name, 1))
        return batch

    async def _metrics(self, metrics_url: str | None) -> kv_metrics.Snapshot | None:
        if not metrics_url:
            return None
        try:
            return await kv_metrics.read(self.client, metrics_url)
        except httpx.HTTPError as exc:
            log.warning("%s: cannot read %s/metrics (%s); transfers not measured", self.target.name, metrics_url,
                        exc)
            return None


async def run_target(target: Target, settings: CompareSettings, tokenizer: datasets.Tokenizer | None,
                     deadline_s: float, target_index: int = 0) -> dict[str, Any]:
    """Measure every prompt length on one mode; `deadline_s` is a `time.perf_counter()` instant."""
    headers = _HeaderLog()
    base_url = normalize_base_url(target.url)
    mode_started_s = time.perf_counter()
    async with httpx.AsyncClient(timeout=httpx.Timeout(settings.timeout_s), event_hooks={"response": [headers]}) \
            as client:
        model = settings.model or await discover_model(client, base_url)
        session = _Session(client, headers, target, model, settings, deadline_s)
        lengths = []
        for length in settings.prompt_lens:
            num_warmup = settings.num_warmup if not lengths else 0
            dataset = datasets.random_dataset(num_warmup + settings.num_requests, length, settings.output_len,
                                              settings.seed + _SEED_STRIDE * target_index + length, tokenizer)
            if time.perf_counter() >= deadline_s:
                log.warning("%s: --max-duration-s reached; prompt length %d not measured", target.name, length)
                break
            log.info("%s: prompt length %d, %d requests (+%d warm-up)", target.name, length,
                     settings.num_requests, num_warmup)
            entry = await _run_length(session, dataset.prompts, num_warmup, length)
            lengths.append({**entry, "exact_lengths": dataset.exact_lengths})
    return {"name": target.name, "kind": target.kind, "url": base_url, "model": model,
            "decode_metrics_url": target.decode_metrics_url, "duration_s": time.perf_counter() - mode_started_s,
            "lengths": lengths}


async def _run_length(session: _Session, prompts: Sequence[datasets.Prompt], num_warmup: int,
                      prompt_len: int) -> dict[str, Any]:
    name = session.target.name
    warmup = (await session.send_all(prompts[:num_warmup], probe_transfers=False)).results
    if any(not result.ok for result in warmup):
        log.warning("%s: warm-up failed: %s", name, warmup[0].error_message)
    probe = session.target.kind == "disagg" and session.target.decode_metrics_url is not None
    started_s = time.perf_counter()
    batch = await session.send_all(prompts[num_warmup:], probe_transfers=probe)
    transfer = kv_metrics.combine(batch.transfers) if probe and batch.transfers else None
    entry = summarize_length(prompt_len, batch.results, time.perf_counter() - started_s, batch.header_kv_bytes,
                             transfer)
    entry["warmup"] = [result.to_json() for result in warmup]
    log.info("%s: prompt length %d done: %d ok, TTFT %s ms, E2E %s ms%s", name, prompt_len, entry["num_ok"],
             _fmt(entry["ttft_ms"]["mean"]), _fmt(entry["e2e_ms"]["mean"]),
             f", transfer {_fmt(transfer['time_ms_mean'])} ms" if transfer else "")
    return entry


def summarize_length(prompt_len: int, results: Sequence[RequestResult], duration_s: float,
                     header_kv_bytes: Sequence[int], transfer: dict[str, Any] | None) -> dict[str, Any]:
    """One prompt length's record: latency distributions, decode time (E2E − TTFT), KV facts, requests."""
    summary = summarize(results, duration_s)
    ok = [result for result in results if result.ok]
    prompt_tokens = [result.prompt_tokens for result in ok if result.prompt_tokens is not None]
    return {
        "prompt_len": prompt_len,
        "num_requests": summary["num_requests"], "num_ok": summary["num_ok"], "failures": summary["failures"],
        "prompt_tokens_mean": statistics.fmean(prompt_tokens) if prompt_tokens else None,
        "output_tokens_mean": statistics.fmean(r.output_tokens for r in ok) if ok else None,
        "ttft_ms": summary["ttft_ms"], "tpot_ms": summary["tpot_ms"], "e2e_ms": summary["e2e_ms"],
        "decode_ms": distribution_ms([r.e2e_s - r.ttft_s for r in ok if r.ttft_s is not None]),
        "server_timing": summary["server_timing"],
        "header_kv_bytes_mean": statistics.fmean(header_kv_bytes) if header_kv_bytes else None,
        "transfer": transfer,
        "requests": [result.to_json() for result in results],
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"
