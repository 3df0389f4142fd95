"""`bench compare --load`: the goodput arithmetic on recorded samples, the workload mix, and a whole sweep against
stub clusters (a disagg router with the conditional decider and a colocated one) writing its report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench import cli as bench_cli
from bench import load_report, load_workload
from bench.load_sweep import SweepSettings, summarize_point
from bench.metrics import RequestResult
from router.decider import DeciderSettings
from tests.support.stub_cluster import stub_cluster
from tests.unit.test_bench_compare import check_png

pytestmark = pytest.mark.timeout(120)
SLO_MS = {"ttft_ms": 1000.0, "tpot_ms": 100.0}


def result(ttft_s: float, tpot_s: float, tokens: int = 11, ok: bool = True, start_s: float = 0.0,
           kv_bytes: int | None = None) -> RequestResult:
    offsets = tuple(ttft_s + i * tpot_s for i in range(tokens))
    return RequestResult(ok=ok, start_s=start_s, e2e_s=offsets[-1], chunk_offsets_s=offsets, output_tokens=tokens,
                         error_kind=None if ok else "http_500", kv_bytes=kv_bytes)


def test_goodput_counts_requests_within_both_slos_per_second_of_the_run():
    samples = [result(0.5, 0.05, kv_bytes=1000),  # good
               result(0.9, 0.099),  # good, just inside both
               result(1.2, 0.05),  # TTFT too long
               result(0.2, 0.15, kv_bytes=3000),  # TPOT too long
               result(0.1, 0.05, tokens=1),  # one token: TPOT undefined, does not count against it: good
               result(0.1, 0.05, ok=False)]  # failed
    kinds = ["chat", "chat", "doc", "chat", "chat", "doc"]
    point = summarize_point(0.5, samples, duration_s=20.0, kinds=kinds, slo_ms=SLO_MS,
                            decisions={"remote/remote_cheaper": 2})
    assert point["num_good"] == 3 and point["goodput_per_s"] == pytest.approx(3 / 20.0)
    assert point["slo_attainment"] == pytest.approx(3 / 6)
    assert point["requests_per_s"] == pytest.approx(5 / 20.0)
    assert point["kv_bytes_per_request"] == pytest.approx(4000 / 5) and point["kv_share"] == pytest.approx(2 / 5)
    assert point["max_itl_ms"] == pytest.approx(150.0)
    assert point["tpot_ms"]["p50"] == pytest.approx((50 + 99) / 2)  # TPOTs 50, 99, 50, 150 ms
    assert point["by_kind"]["chat"]["num_requests"] == 4 and point["by_kind"]["chat"]["num_good"] == 3
    assert point["by_kind"]["doc"]["num_good"] == 0
    assert point["decisions"] == {"remote/remote_cheaper": 2}


def test_the_mix_is_seeded_and_follows_its_humps():
    first = load_workload.mix("chat-docs", 200, seed=7, tokenizer=None)
    assert first == load_workload.mix("chat-docs", 200, seed=7, tokenizer=None)
    assert first != load_workload.mix("chat-docs", 200, seed=8, tokenizer=None)
    for prompt, kind in zip(first.prompts, first.kinds):
        hump = load_workload.CHAT if kind == "chat" else load_workload.DOC
        assert hump.prompt_tokens[0] <= prompt.prompt_tokens <= hump.prompt_tokens[1]
        assert hump.output_tokens[0] <= prompt.max_tokens <= hump.output_tokens[1]
    assert 0.05 < first.kinds.count("doc") / 200 < 0.3
    capped = load_workload.mix("docs", 5, seed=1, tokenizer=None, max_prompt_tokens=900)
    assert {p.prompt_tokens for p in capped.prompts} == {900}
    assert "seed 7" in first.description and "doc 15%" in first.description


def test_ratio_rows_compare_the_disagg_setup_with_the_best_colocated_one():
    def setup(name, goodputs):
        return {"name": name, "points": [{"rate_per_s": r, "goodput_per_s": g} for r, g in goodputs.items()]}

    results = {"settings": {"rates_per_s": [0.5, 1.0]},
               "setups": [setup("colocated", {0.5: 0.4, 1.0: 0.5}), setup("disagg", {0.5: 0.45, 1.0: 0.6}),
                          setup("colocated-dp", {0.5: 0.5, 1.0: 0.4})]}
    assert load_report.ratio_rows(results) == [(0.5, 0.45, 0.5, pytest.approx(0.9)), (1.0, 0.6, 0.5, pytest.approx(1.2))]


def disagg_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="disagg")
    bench_cli.add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_a_sweep_against_stub_setups_writes_a_report_from_its_numbers(tmp_path: Path):
    conditional = DeciderSettings(policy="conditional")
    with stub_cluster(decider=conditional, load_interval_s=0.1) as disagg, \
            stub_cluster(mode="colocated", decodes=2, decode_policy="load_aware") as colocated:
        argv = ["bench", "compare", "--load", "--setup-url", f"disagg={disagg.url}", "--setup-url",
                f"colocated-dp={colocated.url}", "--model", "stub-model", "--model-dir", str(tmp_path / "none"),
                "--rates", "20,40", "--requests-per-rate", "6", "--load-warmup", "1", "--seed", "3",
                "--load-dataset", "chat-docs", "--out-dir", str(tmp_path / "out")]
        assert disagg_main(argv) == 0
        sent = len(disagg.decodes[0].calls) + len(disagg.prefills[0].calls)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [s["name"] for s in results["setups"]] == ["disagg", "colocated-dp"]
    for setup in results["setups"]:
        assert [p["rate_per_s"] for p in setup["points"]] == [20.0, 40.0]
        for point in setup["points"]:
            assert point["num_ok"] == point["num_requests"] == 6 and point["failures"] == {}
            good = sum(1 for r in point["requests"] if r["ok"] and r["ttft_ms"] <= 8000
                       and (r["tpot_ms"] is None or r["tpot_ms"] <= 150))
            assert point["num_good"] == good and point["goodput_per_s"] == pytest.approx(good / point["duration_s"])
    decisions = [p["decisions"] for p in results["setups"][0]["points"]]
    assert sum(sum(d.values()) for d in decisions) == 12 and sent >= 12  # every measured request decided
    assert results["setups"][1]["points"][0]["decisions"] == {}
    assert results["settings"]["slo_ms"] == {"ttft_ms": 8000.0, "tpot_ms": 150.0} and results["settings"]["seed"] == 3
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| 20 | " in report and "disagg / best colocated" in report and "seed 3" in report
    first = results["setups"][0]["points"][0]
    assert f"{first['goodput_per_s']:,.3f}" in report
    check_png(tmp_path / "out" / "goodput.png")
    check_png(tmp_path / "out" / "tpot.png")
