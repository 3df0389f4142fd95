"""Eight concurrent requests through the disagg router give the same greedy tokens as each run alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.integration.prompts import prompt_of
from tests.integration.test_equality import run

pytestmark = pytest.mark.integration


def test_eight_concurrent_requests_match_each_run_alone(cluster):
    bodies = [{"model": cluster.model_name, "prompt": prompt_of(cluster.model_dir, 20 + 7 * i, tag=f"[conc-{i}]"),
               "max_tokens": 16, "temperature": 0, "return_token_ids": True} for i in range(8)]
    alone = [run(cluster.router_url, "completions", body) for body in bodies]
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(lambda body: run(cluster.router_url, "completions", body), bodies))
    for i, (a, t) in enumerate(zip(alone, together)):
        assert a["token_ids"] == t["token_ids"], f"request {i} differs under concurrency"
        assert a["text"] == t["text"]
    assert len({a["text"] for a in alone}) > 1, "distinct prompts should give distinct outputs"
