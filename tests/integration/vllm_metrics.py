"""Reading a vLLM server's Prometheus metrics (summed over label sets)."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def read(vllm_url: str) -> dict[str, float]:
    """Sample name (with `source` label where present) -> value."""
    text = httpx.get(f"{vllm_url}/metrics", timeout=10).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name
            if "source" in sample.labels:
                key += f"[{sample.labels['source']}]"
            values[key] = values.get(key, 0.0) + sample.value
    return values


def delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)
