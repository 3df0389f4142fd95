"""Reading a vLLM server's Prometheus metrics from tests (the parsing is bench's: `bench.kv_metrics.parse`)."""

from __future__ import annotations

import httpx

from bench.kv_metrics import parse


def read(vllm_url: str) -> dict[str, float]:
    """Sample name (with `[source]` where labelled by source) -> value summed over label sets."""
    resp = httpx.get(f"{vllm_url}/metrics", timeout=10)
    resp.raise_for_status()
    return parse(resp.text)


def delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)
