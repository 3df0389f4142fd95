"""Node failures and client disconnects, against stub vLLM servers: retry, fallback, 503, abort."""

from __future__ import annotations

import asyncio
import json
from contextlib import ExitStack

import httpx
import pytest

from router.app import create_app
from router.config import RouterConfig
from tests.support.stub_cluster import completion, stub_cluster, wait_for
from tests.support.stub_vllm import create_stub
from tests.support.threaded_server import serve


def _ok(url: str) -> None:
    resp = httpx.post(f"{url}/v1/completions", json=completion(), timeout=10)
    assert resp.status_code == 200, resp.text


def test_a_failing_prefill_node_is_retried_on_another():
    with stub_cluster(prefills=2) as c:
        c.prefills[0].fail_status = 500  # round robin picks it first
        resp = httpx.post(f"{c.url}/v1/completions", json=completion(), timeout=10)
        assert resp.status_code == 200, resp.text
        assert len(c.prefills[0].calls) == 1 and len(c.prefills[1].calls) == 1
        assert [p["remote_engine_id"] for p in c.decodes[0].pulled] == ["prefill-1"]
        assert c.metric('disagg_router_retries_total{reason="prefill_http_500"}') == 1
        assert c.metric('disagg_router_fallbacks_total{reason="prefill_http_500"}') == 0
        _ok(c.url)


def test_an_unreachable_prefill_node_is_retried_on_another():
    with ExitStack() as stack:
        (gone_app, gone), (live_app, live), (decode_app, decode) = (
            create_stub("prefill", "gone"), create_stub("prefill", "live"), create_stub("decode"))
        gone_ctx = serve(gone_app)
        gone_url = gone_ctx.__enter__()
        urls = (gone_url, stack.enter_context(serve(live_app)))
        config = RouterConfig(mode="disagg", prefill_urls=urls, decode_urls=(stack.enter_context(serve(decode_app)),),
                              health_interval_s=60)
        url = stack.enter_context(serve(create_app(config)))
        gone_ctx.__exit__(None, None, None)  # dies after the router saw it healthy
        for _ in range(2):
            _ok(url)
        assert [p["remote_engine_id"] for p in decode.pulled] == ["live", "live"]
        health = httpx.get(f"{url}/health").json()
        assert [n["healthy"] for n in health["nodes"] if n["url"] == gone_url] == [False]


def test_with_every_prefill_node_down_the_decode_node_serves_colocated_and_it_is_counted():
    with stub_cluster() as c:
        c.prefills[0].fail_status = 503
        resp = httpx.post(f"{c.url}/v1/completions", json=completion(), timeout=10)
        assert resp.status_code == 200, resp.text
        assert "kv_transfer_params" not in c.decodes[0].calls[0] and not c.decodes[0].pulled
        assert c.metric('disagg_router_fallbacks_total{reason="prefill_http_503"}') == 1
        c.prefills[0].healthy = False  # now its health checks fail too: it stays down
        assert wait_for(lambda: httpx.get(f"{c.url}/health").status_code == 503)
        _ok(c.url)  # served colocated again, for another reason, without trying the prefill node
        assert c.metric('disagg_router_fallbacks_total{reason="no_prefill_node"}') == 1
        assert len(c.prefills[0].calls) == 1


def test_a_stream_falls_back_too_and_is_whole():
    with stub_cluster() as c:
        c.prefills[0].healthy = False
        assert wait_for(lambda: httpx.get(f"{c.url}/health").status_code == 503)
        with httpx.stream("POST", f"{c.url}/v1/completions", json=completion(stream=True), timeout=10) as resp:
            lines = [line for line in resp.iter_lines() if line.startswith("data:")]
        assert resp.status_code == 200 and lines[-1] == "data: [DONE]" and len(lines) == 6
        assert not c.prefills[0].calls


def test_503_naming_the_node_when_nothing_can_serve():
    with stub_cluster() as c:
        c.decodes[0].healthy = False
        assert wait_for(lambda: httpx.get(f"{c.url}/health").status_code == 503)
        resp = httpx.post(f"{c.url}/v1/completions", json=completion(), timeout=10)
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "no_decode_node"
        assert "decode" in resp.json()["error"]["message"]
        assert not c.prefills[0].calls, "no prompt is prefilled for a decode node that is not there"
    with stub_cluster(colocated_fallback=False) as c:
        c.prefills[0].healthy = False
        assert wait_for(lambda: httpx.get(f"{c.url}/health").status_code == 503)
        resp = httpx.post(f"{c.url}/v1/completions", json=completion(), timeout=10)
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "no_prefill_node"
        assert c.prefill_urls[0] in resp.json()["error"]["message"]
        assert not c.decodes[0].calls


def test_a_client_gone_mid_stream_closes_the_decode_stream():
    with stub_cluster() as c:
        decode = c.decodes[0]
        decode.token_delay_s = 0.05
        with httpx.stream("POST", f"{c.url}/v1/completions", json=completion(max_tokens=200, stream=True),
                          timeout=10) as resp:
            first = next(resp.iter_lines())
            assert json.loads(first[5:])["choices"]
        assert wait_for(lambda: decode.aborted == 1 and decode.active == 0), "decode stream left open"
        assert wait_for(lambda: c.metric(
            'disagg_router_requests_total{endpoint="completions",mode="disagg",status="client_disconnected"}') == 1)
        decode.token_delay_s = 0.0
        _ok(c.url)
        assert c.metric("disagg_router_requests_in_flight") == 0


def test_a_client_gone_during_prefill_cancels_the_prefill_and_nothing_is_decoded():
    with stub_cluster() as c:
        prefill = c.prefills[0]
        prefill.hold = True
        try:
            httpx.post(f"{c.url}/v1/completions", json=completion(), timeout=0.5)
        except httpx.ReadTimeout:
            pass
        assert wait_for(lambda: prefill.aborted == 1 and prefill.active == 0), "prefill call not cancelled"
        assert wait_for(lambda: c.metric(
            'disagg_router_requests_total{endpoint="completions",mode="disagg",status="client_disconnected"}') == 1)
        prefill.hold = False
        _ok(c.url)
        assert len(c.decodes[0].calls) == 1


async def _read_one_chunk_and_leave(url: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("POST", f"{url}/v1/chat/completions", json={
                "model": "stub-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 300,
                "stream": True}) as resp:
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    return


def test_fifty_clients_leaving_mid_stream_leave_nothing_running():
    with stub_cluster() as c:
        decode = c.decodes[0]
        decode.token_delay_s = 0.02

        async def fifty() -> None:
            await asyncio.gather(*(_read_one_chunk_and_leave(c.url) for _ in range(50)))

        asyncio.run(fifty())
        assert wait_for(lambda: decode.aborted == 50 and decode.active == 0, timeout_s=10), \
            f"{decode.active} decode streams still open, {decode.aborted} aborted"
        assert c.prefills[0].active == 0 and c.metric("disagg_router_requests_in_flight") == 0
        decode.token_delay_s = 0.0
        _ok(c.url)


def test_a_client_leaving_right_after_done_is_counted_ok():
    with stub_cluster() as c:
        c.decodes[0].token_delay_s = 0.3  # the decode node closes its stream 0.3 s after [DONE]
        with httpx.stream("POST", f"{c.url}/v1/completions", json=completion(max_tokens=3, stream=True),
                          timeout=10) as resp:
            lines = []
            for line in resp.iter_lines():
                lines.append(line)
                if line == "data: [DONE]":
                    break  # and leave at once
        assert lines[-1] == "data: [DONE]"
        ok = 'disagg_router_requests_total{endpoint="completions",mode="disagg",status="ok"}'
        assert wait_for(lambda: c.metric(ok) == 1)
        assert c.metric(ok.replace('"ok"', '"client_disconnected"')) == 0


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_a_decode_node_failing_before_any_output_is_retried_on_another(stream):
    with stub_cluster(decodes=2) as c:
        c.decodes[0].fail_status = 500  # round robin picks it first
        resp = httpx.post(f"{c.url}/v1/completions", json=completion(stream=stream), timeout=10)
        assert resp.status_code == 200, resp.text
        assert "[DONE]" in resp.text if stream else resp.json()["choices"][0]["text"]
        assert len(c.decodes[0].calls) == 1 and len(c.decodes[1].pulled) == 1
        assert c.metric('disagg_router_retries_total{reason="decode_http_500"}') == 1
        assert c.metric("disagg_router_requests_in_flight") == 0
        _ok(c.url)


def test_an_unreachable_decode_node_is_retried_and_with_none_left_the_error_names_it():
    with ExitStack() as stack:
        (prefill_app, _), (gone_app, _), (live_app, live) = (
            create_stub("prefill"), create_stub("decode"), create_stub("decode"))
        gone_ctx = serve(gone_app)
        gone_url = gone_ctx.__enter__()
        config = RouterConfig(mode="disagg", prefill_urls=(stack.enter_context(serve(prefill_app)),),
                              decode_urls=(gone_url, stack.enter_context(serve(live_app))), health_interval_s=60)
        url = stack.enter_context(serve(create_app(config)))
        gone_ctx.__exit__(None, None, None)  # dies after the router saw it healthy
        _ok(url)
        assert len(live.pulled) == 1
    with stub_cluster(health_interval_s=60) as c:  # no health check in between: the router's own view
        c.decodes[0].fail_status = 500
        resp = httpx.post(f"{c.url}/v1/completions", json=completion(), timeout=10)
        assert resp.status_code == 502 and "decode node" in resp.json()["error"]["message"]
        assert c.metric("disagg_router_requests_in_flight") == 0
        c.decodes[0].fail_status = None  # a 5xx answer is that request's failure: the node stays in rotation
        _ok(c.url)
