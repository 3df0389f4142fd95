"""`disagg bench compare --load` end to end on the session's tcp cluster: a tiny sweep (one rate, a few short chat
requests, Poisson arrivals) against its router (`disagg`) and its colocated baseline (`colocated`) given as URLs,
so no cluster of its own starts. The report's numbers come from the run: every request answered, the router's
decisions counted (remote, forced: the session router's policy is `always`), KV bytes moved per request only
through the router, and report.md and the PNGs written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.test_bench_real import disagg_main
from tests.unit.test_bench_compare import check_png

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
REQUESTS = 3
KV_BYTES_PER_TOKEN = 46_080  # SmolLM2-135M, fp32


def test_compare_load_sweeps_the_tcp_cluster_and_writes_a_report(tcp_cluster, tmp_path: Path) -> None:
    argv = ["bench", "compare", "--load", "--setup-url", f"disagg={tcp_cluster.router_url}",
            "--setup-url", f"colocated={tcp_cluster.baseline_url}", "--model-dir", str(tcp_cluster.model_dir),
            "--load-dataset", "chat", "--rates", "2", "--requests-per-rate", str(REQUESTS), "--load-warmup", "0",
            "--seed", "7", "--timeout-s", "120", "--out-dir", str(tmp_path)]
    assert disagg_main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    disagg, colocated = results["setups"]
    assert (disagg["name"], colocated["name"]) == ("disagg", "colocated") and not results["not_measured"]
    for setup in (disagg, colocated):
        (point,) = setup["points"]
        assert point["rate_per_s"] == 2 and point["num_requests"] == point["num_ok"] == REQUESTS
        assert 0 < point["ttft_ms"]["p50"] < point["e2e_ms"]["p50"] and point["requests_per_s"] > 0
        assert point["num_good"] == sum(1 for r in point["requests"] if r["ok"] and _within(r, results))
    (disagg_point,), (colocated_point,) = disagg["points"], colocated["points"]
    assert disagg_point["decisions"] == {"remote/forced": REQUESTS}
    assert colocated_point["decisions"] == {} and colocated_point["kv_bytes_per_request"] == 0
    prompt_tokens = sum(r["prompt_tokens"] for r in disagg_point["requests"]) / REQUESTS
    assert disagg_point["kv_bytes_per_request"] == pytest.approx(prompt_tokens * KV_BYTES_PER_TOKEN)
    report = (tmp_path / "report.md").read_text()
    assert "disagg" in report and "colocated" in report and "Goodput" in report
    for name in ("goodput.png", "tpot.png"):
        check_png(tmp_path / name)


def _within(request: dict, results: dict) -> bool:
    slo = results["settings"]["slo_ms"]
    return request["ttft_ms"] <= slo["ttft_ms"] and (request["tpot_ms"] is None or request["tpot_ms"] <= slo["tpot_ms"])
