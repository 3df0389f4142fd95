"""Hundreds of requests at concurrency 16 mixed with cancellations, through stub vLLM servers: every
request completes or fails explicitly, and afterwards nothing is in flight on the router or the nodes."""

from __future__ import annotations

import asyncio
import json
import random

import httpx

from tests.support.stub_cluster import completion, stub_cluster, wait_for

REQUESTS = 320
CONCURRENCY = 16


async def _one(client: httpx.AsyncClient, i: int, rng: random.Random) -> str:
    """'ok', 'left' (this client cancelled), or an explicit error's code; raises on a silent cut."""
    stream, leave = rng.random() < 0.6, rng.random() < 0.25
    body = completion(prompt=f"request {i}", max_tokens=rng.randint(1, 40), stream=stream)
    if not stream:
        try:
            resp = await client.post("/v1/completions", json=body, timeout=0.02 if leave else 30)
        except httpx.TimeoutException:
            return "left"
        return "ok" if resp.status_code == 200 else resp.json()["error"]["code"]
    async with client.stream("POST", "/v1/completions", json=body, timeout=30) as resp:
        lines = []
        async for line in resp.aiter_lines():
            if line.startswith("data:"):
                lines.append(line)
                if leave:
                    return "left"
    assert lines and lines[-1] == "data: [DONE]", f"request {i} ended without [DONE]: {lines[-2:]}"
    errors = [json.loads(line[5:])["error"] for line in lines[:-1] if '"error"' in line]
    return errors[0]["code"] if errors else "ok"


async def _load(url: str) -> dict[str, int]:
    rng, gate = random.Random(16), asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(base_url=url) as client:
        async def limited(i: int) -> str:
            async with gate:
                return await _one(client, i, rng)
        outcomes = await asyncio.gather(*(limited(i) for i in range(REQUESTS)))
    return {o: outcomes.count(o) for o in set(outcomes)}


def test_mixed_load_with_cancellations_leaves_nothing_in_flight():
    with stub_cluster() as c:
        c.decodes[0].token_delay_s = 0.002
        outcomes = asyncio.run(_load(c.url))
        assert set(outcomes) <= {"ok", "left"}, outcomes
        assert outcomes.get("ok", 0) >= REQUESTS // 2 and outcomes.get("left", 0) >= REQUESTS // 10, outcomes
        assert wait_for(lambda: c.metric("disagg_router_requests_in_flight") == 0
                        and c.decodes[0].active == 0 and c.prefills[0].active == 0, timeout_s=10)
        counted = [line for line in c.metrics().splitlines() if line.startswith("disagg_router_requests_total{")]
        statuses = {line.split('status="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1]) for line in counted}
        assert set(statuses) <= {"ok", "client_disconnected"}, statuses  # no error of any kind
        # a client that leaves while its request is still being sent never reaches the router at all
        assert statuses["ok"] >= outcomes["ok"] and sum(statuses.values()) <= REQUESTS, statuses
        assert httpx.post(f"{c.url}/v1/completions", json=completion(), timeout=10).status_code == 200
