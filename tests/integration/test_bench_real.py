"""`bench compare` and `bench serve` against the real local cluster (vLLM prefill + decode over NIXL, router,
colocated baseline), at small sizes so each test stays well under a minute on a 2-core machine."""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from pathlib import Path

import httpx
import pytest

from bench import cli as bench_cli
from bench import datasets
from tests.unit.test_bench_compare import check_png

pytestmark = pytest.mark.integration

PROMPT_LENS = (32, 160)  # one KV block of 128 tokens, and two
OUTPUT_TOKENS = 8
KV_BYTES_PER_TOKEN = 46_080  # SmolLM2-135M, fp32
METRICS = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")


def disagg_main(argv: list[str]) -> int:
    """`disagg ARGV` for bench's subcommands, in this process."""
    logging.getLogger("bench").setLevel(logging.INFO)
    parser = argparse.ArgumentParser(prog="disagg")
    bench_cli.add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_compare_reports_disagg_against_colocated(cluster, tmp_path: Path) -> None:
    argv = ["bench", "compare", "--colocated-url", cluster.baseline_url, "--disagg-url", f"nixl={cluster.router_url}",
            "--decode-metrics-url", f"nixl={cluster.decode_vllm_url}", "--model-dir", str(cluster.model_dir),
            "--prompt-lens", ",".join(map(str, PROMPT_LENS)), "--output-len", str(OUTPUT_TOKENS),
            "--num-requests", "1", "--link-mib", "32", "--timeout-s", "120", "--max-duration-s", "150",
            "--out-dir", str(tmp_path)]
    assert disagg_main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["kv_bytes_per_token"] == KV_BYTES_PER_TOKEN and results["link"]["gb_per_s"] > 0
    colocated, nixl = results["modes"]
    assert (colocated["name"], nixl["name"]) == ("colocated", "nixl")
    for mode in (colocated, nixl):
        assert [entry["prompt_len"] for entry in mode["lengths"]] == list(PROMPT_LENS)
        for entry in mode["lengths"]:
            assert entry["num_ok"] == 1 and entry["prompt_tokens_mean"] == entry["prompt_len"]  # exact lengths
            assert entry["output_tokens_mean"] == OUTPUT_TOKENS
            assert 0 < entry["ttft_ms"]["mean"] < entry["e2e_ms"]["mean"]
    for entry in nixl["lengths"]:
        transfer = entry["transfer"]
        assert transfer["count"] == 1 and transfer["bytes_mean"] > 0 and transfer["time_ms_mean"] > 0
        assert transfer["prompt_tokens_by_source"].get("local_cache_hit", 0) == 0
        assert entry["header_kv_bytes_mean"] == entry["prompt_len"] * KV_BYTES_PER_TOKEN
    assert nixl["lengths"][1]["transfer"]["bytes_mean"] > nixl["lengths"][0]["transfer"]["bytes_mean"]
    report_text = (tmp_path / "report.md").read_text()
    assert "## nixl vs colocated" in report_text and "| 160 |" in report_text
    for name in ("ttft.png", "transfer.png", "e2e.png"):
        check_png(tmp_path / name)


def _direct_ttft(cluster, prompt: str) -> tuple[float, int, float]:
    """TTFT (s), completion tokens and the router's reported prefill (s) of one streamed request,
    timed here without bench's client."""
    body = {"model": cluster.model_name, "prompt": prompt, "max_tokens": OUTPUT_TOKENS, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    first_s, completion_tokens = None, -1
    started_s = time.perf_counter()
    with httpx.stream("POST", f"{cluster.router_url}/v1/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        prefill_s = float(response.headers["server-timing"].split("prefill;dur=")[1].split(",")[0]) / 1000
        for line in response.iter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            chunk = json.loads(line[5:])
            if first_s is None and any(choice.get("text") for choice in chunk.get("choices") or []):
                first_s = time.perf_counter() - started_s
            if chunk.get("usage"):
                completion_tokens = chunk["usage"]["completion_tokens"]
    assert first_s is not None
    return first_s, completion_tokens, prefill_s


def test_bench_serve_metrics_agree_with_a_direct_request(cluster, tmp_path: Path) -> None:
    out = tmp_path / "serve.json"
    seed = random.randrange(1_000_000)
    argv = ["bench", "serve", "--url", cluster.router_url, "--num-requests", "3", "--num-warmup", "1",
            "--input-len", "32", "--max-tokens", str(OUTPUT_TOKENS), "--ignore-eos", "--tokenizer",
            str(cluster.model_dir), "--seed", str(seed), "--timeout-s", "120", "--max-duration-s", "120",
            "--no-progress", "--output", str(out)]
    assert disagg_main(argv) == 0
    results = json.loads(out.read_text())
    assert results["num_ok"] == 3 and results["num_failed"] == 0 and results["dataset"]["exact_lengths"]
    assert results["total_output_tokens"] == 3 * OUTPUT_TOKENS and results["total_prompt_tokens"] == 3 * 32
    assert results["requests_per_s"] > 0 and results["output_tokens_per_s"] > 0
    for key in METRICS:
        stats = results[key]
        if key == "itl_ms":  # one gap per streamed chunk; a loaded server may put several tokens in one chunk
            assert 3 <= stats["count"] <= 3 * (OUTPUT_TOKENS - 1), key
        else:
            assert stats["count"] == 3, key
        assert all(stats[name] is not None and stats[name] > 0 for name in ("mean", "p50", "p95", "p99")), key
    assert {"queue", "prefill"} <= set(results["server_timing"])
    for request in results["requests"]:
        assert request["output_tokens"] == OUTPUT_TOKENS and request["prompt_tokens"] == 32
        # TTFT covers the router's prefill step; TPOT is the rest spread over the other tokens
        assert request["server_timing_ms"]["prefill"] < request["ttft_ms"] < request["e2e_ms"]
        assert request["tpot_ms"] == pytest.approx((request["e2e_ms"] - request["ttft_ms"]) / (OUTPUT_TOKENS - 1),
                                                   rel=1e-3)
    tokenizer = datasets.load_tokenizer(str(cluster.model_dir))
    prompt = datasets.random_dataset(1, 32, OUTPUT_TOKENS, seed + 1, tokenizer).prompts[0].text
    direct_ttft_s, completion_tokens, direct_prefill_s = _direct_ttft(cluster, prompt)
    # The same relations hold for a request timed by hand as for bench's own: counts match, and the
    # first token comes after the prefill step the router reports (no cross-request wall-clock bound).
    assert completion_tokens == OUTPUT_TOKENS
    assert direct_prefill_s < direct_ttft_s
