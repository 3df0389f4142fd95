"""`bench serve` against a fake OpenAI streaming server (FastAPI + uvicorn on a loopback socket).

The fake streams `max_tokens` chunks, the first after TTFT_S and the rest ITL_S apart, and sends a
Server-Timing header. Words in the prompt switch it into failure modes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
import time
from typing import Any, AsyncIterator, Iterator

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from bench import cli
from bench.client import CHAT_COMPLETIONS, EndpointError
from bench.datasets import Prompt
from bench.loadgen import LoadSettings, normalize_base_url, run_load
from bench.metrics import summarize

TTFT_S = 0.15
ITL_S = 0.02
SLOW_S = 4.0  # well past the timeouts the tests set, even on a loaded 2-core machine
SERVER_TIMING = 'queue;dur=0.5, prefill;desc="fake, prefill";dur=150'


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def token_chunk(index: int, chat: bool) -> dict[str, Any]:
    choice = {"index": 0, "delta": {"content": f" t{index}"}} if chat else {"index": 0, "text": f" t{index}"}
    return {"id": "x", "choices": [choice]}


async def fake_stream(prompt: str, max_tokens: int, chat: bool, include_usage: bool) -> AsyncIterator[str]:
    if chat:
        yield sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})  # not a token
    await asyncio.sleep(SLOW_S if "SLOW" in prompt else TTFT_S)
    for index in range(max_tokens):
        if index:
            await asyncio.sleep(ITL_S)
        yield sse(token_chunk(index, chat))
        if "STREAMERR" in prompt and index == 1:
            yield "event: error\n" + sse({"error": {"message": "decode node died", "type": "upstream_error"}})
            yield "data: [DONE]\n\n"
            return
    if "TRUNCATE" in prompt:
        return
    if include_usage and "NOUSAGE" not in prompt:
        yield sse({"choices": [], "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": max_tokens}})
    yield "data: [DONE]\n\n"


def make_app(received: list[dict[str, Any]]) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}

    async def respond(request: Request, chat: bool) -> Any:
        body = await request.json()
        received.append(body)
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        if "FAIL500" in prompt:
            return JSONResponse({"error": {"message": "boom", "type": "internal_error"}}, status_code=500,
                                headers={"Server-Timing": "queue;dur=3"})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(fake_stream(prompt, body["max_tokens"], chat, include_usage),
                                 media_type="text/event-stream", headers={"Server-Timing": SERVER_TIMING})

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await respond(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await respond(request, chat=True)

    return app


class FakeServer:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(make_app(self.received), log_level="warning", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "FakeServer":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "fake server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    with FakeServer() as server:
        yield server


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def prompts(text: str, count: int, max_tokens: int = 5) -> list[Prompt]:
    return [Prompt(f"{text} {i}", 2, max_tokens) for i in range(count)]


def run(settings: LoadSettings, measured: list[Prompt], warmup: list[Prompt] = ()):
    return asyncio.run(run_load(settings, measured, warmup))


def test_timings_and_tokens_agree_with_the_fake(fake):
    settings = LoadSettings(base_url=fake.url + "/v1/", concurrency=2, ignore_eos=True)
    load_run = run(settings, prompts("hello world", 4, max_tokens=6), warmup=prompts("warm", 1))
    assert load_run.model == "fake-model" and len(load_run.warmup_results) == 1
    assert len(load_run.results) == 4 and all(r.ok for r in load_run.results)
    for result in load_run.results:
        assert result.output_tokens == 6 and result.prompt_tokens == 3
        assert TTFT_S <= result.ttft_s < TTFT_S + 1.0
        assert len(result.chunk_offsets_s) == 6
        assert sum(result.itl_s) >= 0.5 * 5 * ITL_S  # 5 gaps the fake spaced ITL_S apart
        assert result.e2e_s >= result.chunk_offsets_s[-1]
        assert result.server_timing_ms == {"queue": 0.5, "prefill": 150.0}
    body = fake.received[-1]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["ignore_eos"] is True and body["model"] == "fake-model" and body["max_tokens"] == 6
    summary = summarize(load_run.results, load_run.duration_s)
    assert summary["total_output_tokens"] == 24
    assert summary["server_timing"]["prefill"]["p50_ms"] == 150.0


def test_chat_endpoint_skips_role_chunk_and_falls_back_to_chunk_count(fake):
    settings = LoadSettings(base_url=fake.url, endpoint=CHAT_COMPLETIONS, model="m", concurrency=1)
    result = run(settings, prompts("NOUSAGE", 1, max_tokens=3)).results[0]
    assert result.ok and result.output_tokens == 3 and result.prompt_tokens is None
    assert result.ttft_s >= TTFT_S  # the empty role chunk at t≈0 is not the first token
    assert fake.received[-1]["messages"] == [{"role": "user", "content": "NOUSAGE 0"}]
    assert "ignore_eos" not in fake.received[-1]


def test_failures_counted_by_kind(fake):
    measured = (prompts("FAIL500", 2) + prompts("STREAMERR", 1) + prompts("SLOW", 1)
                + prompts("TRUNCATE", 1) + prompts("fine", 1))
    settings = LoadSettings(base_url=fake.url, model="m", concurrency=6, timeout_s=2.0)
    load_run = run(settings, measured)
    summary = summarize(load_run.results, load_run.duration_s)
    assert summary["failures"] == {"http_500": 2, "incomplete_stream": 1, "stream_error": 1, "timeout": 1}
    assert summary["num_ok"] == 1
    by_kind = {r.error_kind: r for r in load_run.results}
    assert by_kind["http_500"].error_message == "boom"
    assert by_kind["http_500"].server_timing_ms == {"queue": 3.0}
    assert "decode node died" in by_kind["stream_error"].error_message
    assert by_kind["timeout"].e2e_s < SLOW_S  # gave up before the fake answered


def test_connection_failure_and_discovery_failure():
    url = closed_port_url()
    load_run = run(LoadSettings(base_url=url, model="m", timeout_s=2), prompts("x", 2))
    assert [r.error_kind for r in load_run.results] == ["connection", "connection"]
    with pytest.raises(EndpointError, match="/v1/models"):
        run(LoadSettings(base_url=url, timeout_s=2), prompts("x", 1))


def test_max_duration_cancels_in_flight_and_skips_the_rest(fake):
    settings = LoadSettings(base_url=fake.url, model="m", concurrency=1, timeout_s=5, max_duration_s=1.0)
    load_run = run(settings, prompts("SLOW", 3))
    assert [r.error_kind for r in load_run.results] == ["cancelled"]
    assert load_run.num_not_started == 2
    summary = summarize(load_run.results, load_run.duration_s)
    assert summary["num_cancelled"] == 1 and summary["num_failed"] == 0


def test_poisson_rate_sends_every_request(fake):
    settings = LoadSettings(base_url=fake.url, model="m", request_rate_per_s=50.0, concurrency=3, seed=1)
    load_run = run(settings, prompts("fine", 5, max_tokens=2))
    assert len(load_run.results) == 5 and all(r.ok for r in load_run.results)
    starts = sorted(r.start_s for r in load_run.results)
    assert starts[-1] > starts[0]  # arrivals are spread out, not all at t=0


def test_settings_validation():
    assert normalize_base_url("http://h:1/v1/") == "http://h:1"
    for bad in ({"base_url": "h:1"}, {"base_url": "http://h", "endpoint": "/v1/embeddings"},
                {"base_url": "http://h", "concurrency": 0}, {"base_url": "http://h", "request_rate_per_s": 0}):
        with pytest.raises(ValueError):
            LoadSettings(**bad)


def serve_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="disagg")
    cli.add_parsers(parser.add_subparsers())
    args = parser.parse_args(["bench", "serve", *argv])
    return args.func(args)


def test_cli_writes_results_and_prints_summary(fake, tmp_path, capsys):
    output = tmp_path / "out" / "results.json"
    code = serve_cli(["--url", fake.url, "--num-requests", "3", "--num-warmup", "1", "--input-len", "8",
                      "--max-tokens", "4", "--concurrency", "2", "--goodput", "ttft_ms=60000",
                      "--no-progress", "--output", str(output)])
    assert code == 0
    results = json.loads(output.read_text())
    assert results["num_ok"] == 3 and results["model"] == "fake-model"
    assert results["total_output_tokens"] == 12 and results["warmup"] == {"num_requests": 1, "num_ok": 1}
    assert results["server_timing"]["prefill"]["mean_ms"] == 150.0
    assert results["goodput"]["num_good"] == 3
    assert results["ttft_ms"]["p50"] >= TTFT_S * 1000
    assert results["dataset"]["exact_lengths"] is False and len(results["requests"]) == 3
    assert "api_key" not in results["settings"]
    out = capsys.readouterr().out
    assert "TTFT" in out and "server prefill" in out


def test_cli_exit_codes(fake, capsys):
    assert serve_cli(["--url", closed_port_url(), "--num-requests", "1", "--no-progress"]) == 1
    assert serve_cli(["--url", fake.url, "--dataset", "sharegpt", "--no-progress"]) == 2
    assert serve_cli(["--url", fake.url, "--num-requests", "1", "--num-warmup", "0", "--model", "m",
                      "--no-progress", "--input-len", "3", "--max-tokens", "2"]) == 0
    err = capsys.readouterr().err
    assert "--sharegpt-path" in err and "/v1/models" in err
