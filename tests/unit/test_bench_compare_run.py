"""`bench compare`'s measurement against fake servers on loopback sockets: a colocated fake, a disaggregated
fake that sends the router's Server-Timing header, and a fake decode vLLM /metrics whose NIXL counters
move with each request. Also: the metrics parser, the link measurement, the CLI's given-URL path."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from bench import cli, compare, compare_cli, kv_metrics, linkspeed
from bench.compare import CompareSettings, Target
from tests.support.threaded_server import serve
from tests.unit.test_bench_compare import check_png

BYTES_PER_WORD = 1000
SECONDS_PER_WORD = 0.0001
CONTEXT_TOKENS = 64


class FakeDecodeMetrics:
    """NIXL histograms as vLLM exports them; `observe_request` records one transfer."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.time = Histogram("vllm:nixl_xfer_time_seconds", "xfer", ["engine"], registry=self.registry)
        self.bytes = Histogram("vllm:nixl_bytes_transferred", "bytes", ["engine"], registry=self.registry)

    def observe_request(self, num_words: int) -> None:
        self.time.labels("0").observe(num_words * SECONDS_PER_WORD)
        self.bytes.labels("0").observe(num_words * BYTES_PER_WORD)


def fake_app(decode_metrics: FakeDecodeMetrics | None) -> FastAPI:
    """An OpenAI streaming fake; with `decode_metrics` it plays the disaggregated router."""
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse({"data": [{"id": "fake-model", "max_model_len": CONTEXT_TOKENS}]})

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(decode_metrics.registry).decode() if decode_metrics else "")

    @app.post("/v1/completions")
    async def completions(request: Request) -> StreamingResponse:
        body = await request.json()
        num_words = len(body["prompt"].split())
        headers = {"Server-Timing": "queue;dur=0.1"}
        if decode_metrics is not None:
            decode_metrics.observe_request(num_words)
            headers["Server-Timing"] += f', prefill;dur=2.5, kv;desc="{num_words * BYTES_PER_WORD} bytes"'
        return StreamingResponse(_stream(body, num_words), media_type="text/event-stream", headers=headers)

    return app


async def _stream(body: dict[str, Any], num_words: int) -> AsyncIterator[str]:
    assert body["ignore_eos"] is True and body["temperature"] == 0.0 and body["stream"] is True
    await asyncio.sleep(0.005 + num_words * 0.0002)  # "prefill" grows with the prompt
    for index in range(body["max_tokens"]):
        await asyncio.sleep(0.002)
        yield f"data: {json.dumps({'choices': [{'index': 0, 'text': f' t{index}'}]})}\n\n"
    usage = {"prompt_tokens": num_words, "completion_tokens": body["max_tokens"]}
    yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
    yield "data: [DONE]\n\n"


@pytest.fixture
def servers() -> Any:
    metrics = FakeDecodeMetrics()
    with serve(fake_app(None)) as colocated_url, serve(fake_app(metrics)) as disagg_url:
        yield colocated_url, disagg_url


def test_run_target_measures_transfers_from_metric_deltas(servers: tuple[str, str]) -> None:
    _, disagg_url = servers
    settings = CompareSettings(prompt_lens=(10, 40), output_len=4, num_requests=2, num_warmup=1)
    target = Target("nixl", disagg_url, decode_metrics_url=disagg_url)
    mode = asyncio.run(compare.run_target(target, settings, None, time.perf_counter() + 60))
    assert mode["kind"] == "disagg" and mode["model"] == "fake-model"
    assert [entry["prompt_len"] for entry in mode["lengths"]] == [10, 40]
    for entry in mode["lengths"]:
        assert entry["num_ok"] == entry["num_requests"] == 2  # the warm-up is not counted
        assert entry["output_tokens_mean"] == 4 and entry["ttft_ms"]["mean"] > 0
        assert entry["decode_ms"]["mean"] == pytest.approx(entry["e2e_ms"]["mean"] - entry["ttft_ms"]["mean"])
        words = entry["prompt_tokens_mean"]
        assert entry["transfer"]["count"] == 2  # deltas exclude the warm-up's transfer
        assert len(entry["transfer"]["per_request"]) == 2
        assert entry["transfer"]["time_ms_p50"] == pytest.approx(words * SECONDS_PER_WORD * 1000)
        assert entry["transfer"]["bytes_mean"] == pytest.approx(words * BYTES_PER_WORD)
        assert entry["transfer"]["time_ms_mean"] == pytest.approx(words * SECONDS_PER_WORD * 1000)
        assert entry["header_kv_bytes_mean"] == pytest.approx(words * BYTES_PER_WORD)
        assert entry["server_timing"]["prefill"]["mean_ms"] == 2.5


def test_run_target_stops_at_the_deadline(servers: tuple[str, str]) -> None:
    colocated_url, _ = servers
    settings = CompareSettings(prompt_lens=(10, 20), output_len=2, num_requests=2)
    mode = asyncio.run(compare.run_target(Target("colocated", colocated_url), settings, None, time.perf_counter()))
    assert mode["lengths"] == []


def test_metrics_delta_picks_the_connector_that_moved_data() -> None:
    before = kv_metrics.parse("")
    metrics = FakeDecodeMetrics()
    metrics.observe_request(100)
    after = kv_metrics.parse(generate_latest(metrics.registry).decode()
                             + 'vllm:prompt_tokens_by_source_total{source="local_cache_hit"} 7.0\n')
    found = kv_metrics.delta(before, after, "some-name")
    assert found.connector == "nixl" and found.count == 1
    assert found.mean_bytes == 100 * BYTES_PER_WORD and found.mean_time_ms == pytest.approx(10.0)
    assert found.prompt_tokens_by_source == {"local_cache_hit": 7.0}
    assert kv_metrics.delta(after, after, "nixl").mean_time_ms is None
    pooled = kv_metrics.combine([found, kv_metrics.delta(after, after, "nixl"), found])
    assert pooled["count"] == 2 and pooled["time_ms_mean"] == pytest.approx(10.0)
    assert pooled["per_request"] == [{"bytes": 100 * BYTES_PER_WORD, "time_ms": pytest.approx(10.0)}] * 2
    assert pooled["prompt_tokens_by_source"] == {"local_cache_hit": 14.0}


def test_link_measurement_streams_real_bytes() -> None:
    measured = linkspeed.measure_tcp_bandwidth("127.0.0.1", 8 * linkspeed.MIB, linkspeed.MIB, repeats=2)
    assert len(measured.samples_gb_s) == 2 and measured.gb_per_s > 0
    assert measured.to_json()["gb_per_s"] == pytest.approx(measured.gb_per_s, rel=1e-3)
    with pytest.raises(ValueError):
        linkspeed.measure_tcp_bandwidth("127.0.0.1", linkspeed.MIB, linkspeed.MIB)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_parsers(parser.add_subparsers(dest="command"))
    return parser.parse_args(["bench", "compare", *argv])


def test_cli_given_urls_writes_report_results_and_plots(servers: tuple[str, str], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    colocated_url, disagg_url = servers
    monkeypatch.setattr(compare_cli.datasets, "load_tokenizer", lambda path: None)  # word prompts
    args = parse(["--colocated-url", colocated_url, "--disagg-url", f"nixl={disagg_url}",
                  "--decode-metrics-url", f"nixl={disagg_url}", "--prompt-lens", "16,200", "--output-len", "8",
                  "--num-requests", "1", "--kv-bytes-per-token", "1000", "--link-bandwidth-gb-s", "2",
                  "--seed", "3", "--out-dir", str(tmp_path)])
    assert args.func(args) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["settings"]["prompt_lens"] == [16, CONTEXT_TOKENS - 8]  # 200 capped at 64 - 8
    assert results["max_model_len"] == CONTEXT_TOKENS and results["link"]["gb_per_s"] == 2
    assert [mode["name"] for mode in results["modes"]] == ["colocated", "nixl"]
    assert all(entry["transfer"]["count"] == 1 for entry in results["modes"][1]["lengths"])
    assert results["modes"][0]["lengths"][0]["transfer"] is None
    report_text = (tmp_path / "report.md").read_text()
    assert "## nixl vs colocated" in report_text and "| 16 |" in report_text
    for name in ("ttft.png", "transfer.png", "e2e.png"):
        check_png(tmp_path / name)


def test_cli_rejects_inconsistent_targets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(["--local", "--colocated-url", "http://127.0.0.1:1", "--out-dir", str(tmp_path)])
    assert args.func(args) == 2
    args = parse(["--disagg-url", "nixl=http://127.0.0.1:1", "--decode-metrics-url", "tcp=http://127.0.0.1:2",
                  "--kv-bytes-per-token", "1", "--link-bandwidth-gb-s", "1", "--out-dir", str(tmp_path)])
    with pytest.raises(compare_cli.ConfigError):
        compare_cli.given_targets(args)
    with pytest.raises(SystemExit):
        parse(["--disagg-url", "colocated=http://127.0.0.1:1"])
    with pytest.raises(SystemExit):
        parse(["--transports", "nixl,rdma"])


def test_local_cluster_turns_prefix_caching_off(tmp_path: Path) -> None:
    from bench import local_cluster
    from deploy import local

    ports = {"router": 1, "baseline": 2, "prefill": 3, "decode": 5, "kv": 7}
    options = local_cluster.options("nixl", tmp_path, 4196, tmp_path / "logs", ports)
    assert options.engine.prefix_caching is False and options.engine.max_model_len == 4196
    (tmp_path / "config.json").write_text("{}")
    spec = local.spec(options)  # `disagg up --local`'s cluster
    assert spec.router.baseline_port == 2 and not spec.engine.prefix_caching
    first = local_cluster.free_ports(4)
    assert all(local_cluster._bindable("127.0.0.1", port) for port in range(first, first + 4))
    low, high = local_cluster._port_range()
    assert low <= first and first + 4 <= high  # below the kernel's ephemeral range: no connection takes them
    others = [local_cluster.free_ports(4) for _ in range(20)]  # never handed out twice, even while unbound
    taken = [port for start in [first, *others] for port in range(start, start + 4)]
    assert len(set(taken)) == len(taken)


def test_cli_reports_an_unreachable_mode_and_fails(servers: tuple[str, str], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    colocated_url, _ = servers
    monkeypatch.setattr(compare_cli.datasets, "load_tokenizer", lambda path: None)
    args = parse(["--colocated-url", colocated_url, "--disagg-url", "nixl=http://127.0.0.1:9",
                  "--prompt-lens", "16", "--output-len", "2", "--num-requests", "1", "--kv-bytes-per-token", "10",
                  "--link-bandwidth-gb-s", "1", "--timeout-s", "5", "--out-dir", str(tmp_path)])
    assert args.func(args) == 1
    results = json.loads((tmp_path / "results.json").read_text())
    assert [mode["name"] for mode in results["modes"]] == ["colocated"]
    assert results["not_measured"][0].startswith("nixl: GET http://127.0.0.1:9/v1/models failed")
    assert "- not measured: nixl:" in (tmp_path / "report.md").read_text()


def test_local_mode_measures_each_started_cluster(servers: tuple[str, str], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """--local orchestration with the cluster launcher replaced: nixl starts, tcp fails to start."""
    from contextlib import contextmanager

    from bench import local_cluster

    colocated_url, disagg_url = servers
    started: list[tuple[str, int]] = []

    @contextmanager
    def fake_cluster(transport: str, model_dir: Path, max_model_len: int, log_dir: Path, timeout_s: float):
        started.append((transport, max_model_len))
        if transport == "tcp":
            raise local_cluster.ClusterFailed("decode exited while starting")
        yield local_cluster.LocalCluster(transport, disagg_url, colocated_url, "http://unused", disagg_url, log_dir)

    monkeypatch.setattr(local_cluster, "local_cluster", fake_cluster)
    monkeypatch.setattr(compare_cli.datasets, "load_tokenizer", lambda path: None)
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 40}))
    args = parse(["--local", "--transports", "nixl,tcp", "--model-dir", str(tmp_path), "--prompt-lens", "8,100",
                  "--output-len", "4", "--num-requests", "1", "--kv-bytes-per-token", "10",
                  "--link-bandwidth-gb-s", "1", "--out-dir", str(tmp_path / "out")])
    assert args.func(args) == 1  # tcp is missing
    assert started == [("tcp", 40), ("nixl", 40)]  # tcp first; context: 100 + 4 wanted, the model allows 40
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [mode["name"] for mode in results["modes"]] == ["colocated", "nixl"]
    assert results["settings"]["prompt_lens"] == [8, 36]
    assert "colocated baseline: the decode node of the nixl cluster alone" in results["notes"]
    assert results["not_measured"] == [f"tcp: its cluster did not start (logs in {tmp_path / 'out' / 'logs' / 'tcp'})"]
    assert all(entry["transfer"]["count"] == 1 for entry in results["modes"][1]["lengths"])
