"""The router's security and limits against stub vLLM servers: API key, admission, deadline, body size."""

from __future__ import annotations

import argparse
import json
import threading

import httpx
import pytest

from router import cli as router_cli
from tests.support.stub_cluster import completion, stub_cluster, wait_for

KEY = "sk-test-0123456789"


def _assert_openai_error(resp: httpx.Response, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer wrong-key"},
    {"Authorization": f"Basic {KEY}"},
    {"Authorization": f"Bearer {KEY}x"},
    {"Authorization": "Bearer"},
    {"Authorization": b"Bearer \xff\xfe"},
])
def test_without_the_api_key_nothing_runs(headers):
    with stub_cluster(api_key=KEY) as c:
        for path, body in (("/v1/completions", completion()),
                           ("/v1/chat/completions", {"model": "stub-model", "messages": []})):
            err = _assert_openai_error(httpx.post(f"{c.url}{path}", json=body, headers=headers), 401,
                                       "invalid_api_key")
            assert err["type"] == "invalid_request_error"
        resp = httpx.get(f"{c.url}/v1/models", headers=headers)
        _assert_openai_error(resp, 401, "invalid_api_key")
        assert resp.headers["www-authenticate"] == "Bearer"
        assert not c.prefills[0].calls and not c.decodes[0].calls
        assert c.metric('disagg_router_requests_total{endpoint="completions",mode="disagg",status="error_401"}') == 1


def test_the_key_is_checked_before_the_body_is_read():
    import socket

    with stub_cluster(api_key=KEY) as c:
        host, port = c.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000000\r\n\r\n{")  # the rest of the body never comes
            head = sock.recv(65536).decode()
        assert head.startswith("HTTP/1.1 401") and "invalid_api_key" in head


def test_with_the_api_key_requests_are_served_and_health_and_metrics_stay_open():
    with stub_cluster(api_key=KEY) as c:
        auth = {"Authorization": f"Bearer {KEY}"}
        assert httpx.post(f"{c.url}/v1/completions", json=completion(), headers=auth, timeout=10).status_code == 200
        assert httpx.get(f"{c.url}/v1/models", headers=auth).json()["data"][0]["id"] == "stub-model"
        assert httpx.get(f"{c.url}/health").status_code == 200
        assert "disagg_router_requests_total" in httpx.get(f"{c.url}/metrics").text
        assert len(c.decodes[0].calls) == 1


def test_api_key_comes_from_the_flag_or_the_environment(monkeypatch):
    def parse(argv: list[str]):
        parser = argparse.ArgumentParser()
        router_cli.add_parsers(parser.add_subparsers())
        return router_cli.config_from_args(parser.parse_args(["router", "--mode", "colocated", "--decode", "http://d:1", *argv]))

    monkeypatch.delenv("DISAGG_API_KEY", raising=False)
    assert parse([]).api_key is None and parse(["--api-key", "k1"]).api_key == "k1"
    monkeypatch.setenv("DISAGG_API_KEY", "k2")
    assert parse([]).api_key == "k2" and parse(["--api-key", "k1"]).api_key == "k1"
    assert "k2" not in repr(parse([])), "the key must not show in logs of the config"


def _post_in_thread(url: str, body: dict, results: list) -> threading.Thread:
    def run() -> None:
        results.append(httpx.post(f"{url}/v1/completions", json=body, timeout=30))
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_full_queue_gets_429_with_retry_after_and_the_admitted_ones_finish():
    with stub_cluster(mode="colocated", max_inflight=1, max_queue=1) as c:
        decode = c.decodes[0]
        decode.hold = True
        results: list[httpx.Response] = []
        first = _post_in_thread(c.url, completion(), results)
        assert wait_for(lambda: decode.active == 1)
        second = _post_in_thread(c.url, completion(), results)
        assert wait_for(lambda: c.metric("disagg_router_requests_queued") == 1)
        resp = httpx.post(f"{c.url}/v1/completions", json=completion(), timeout=10)
        err = _assert_openai_error(resp, 429, "rate_limit_exceeded")
        assert err["type"] == "requests" and int(resp.headers["retry-after"]) >= 1
        decode.hold = False
        first.join(10), second.join(10)
        assert [r.status_code for r in results] == [200, 200] and len(decode.calls) == 2
        assert c.metric('disagg_router_requests_total{endpoint="completions",mode="colocated",status="error_429"}') == 1
        assert c.metric("disagg_router_requests_in_flight") == 0


def test_past_its_deadline_a_request_gets_504_and_its_node_call_is_cancelled():
    with stub_cluster(request_timeout_s=1.0, max_inflight=1) as c:
        decode = c.decodes[0]
        decode.hold = True
        results: list[httpx.Response] = []
        first = _post_in_thread(c.url, completion(), results)  # in flight, held by the decode node
        assert wait_for(lambda: decode.active == 1)
        queued = httpx.post(f"{c.url}/v1/completions", json=completion(), timeout=10)  # waits for a slot
        first.join(10)
        _assert_openai_error(results[0], 504, "request_timeout")
        _assert_openai_error(queued, 504, "request_timeout")
        # the queued one may have got the slot in the instant before its own deadline: either way, every
        # call that reached the decode node was cancelled there
        assert wait_for(lambda: decode.active == 0 and decode.aborted == len(decode.calls) >= 1), \
            "decode call not cancelled"
        decode.hold = False
        assert httpx.post(f"{c.url}/v1/completions", json=completion(), timeout=10).status_code == 200
        assert c.metric('disagg_router_failures_total{reason="request_timeout"}') == 2


def test_a_stream_past_its_deadline_ends_with_an_error_event_then_done():
    with stub_cluster(request_timeout_s=2.0) as c:
        c.decodes[0].token_delay_s = 0.2
        with httpx.stream("POST", f"{c.url}/v1/completions", json=completion(max_tokens=50, stream=True),
                          timeout=10) as resp:
            assert resp.status_code == 200
            lines = [line for line in resp.iter_lines() if line]
        assert 2 <= sum(1 for line in lines if line.startswith('data: {"id"')) < 50
        assert lines[-3:-1] == ["event: error", lines[-2]] and lines[-1] == "data: [DONE]"
        assert json.loads(lines[-2][5:])["error"]["code"] == "request_timeout"
        assert wait_for(lambda: c.decodes[0].aborted == 1 and c.decodes[0].active == 0)
        c.decodes[0].token_delay_s = 0.0
        assert httpx.post(f"{c.url}/v1/completions", json=completion(), timeout=10).status_code == 200


def test_bodies_over_the_limit_get_413_declared_or_chunked():
    with stub_cluster(max_body_bytes=64 * 1024) as c:
        big = json.dumps(completion(prompt="x" * 100_000)).encode()
        _assert_openai_error(httpx.post(f"{c.url}/v1/completions", content=big,
                                        headers={"content-type": "application/json"}), 413, "body_too_large")

        def chunked():
            for i in range(0, len(big), 8192):
                yield big[i:i + 8192]

        resp = httpx.post(f"{c.url}/v1/completions", content=chunked(), headers={"content-type": "application/json"})
        assert "content-length" not in resp.request.headers
        _assert_openai_error(resp, 413, "body_too_large")
        assert not c.prefills[0].calls
        assert httpx.post(f"{c.url}/v1/completions", json=completion(prompt="x" * 60_000), timeout=10).status_code == 200


@pytest.mark.parametrize("raw", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"model": "stub-model", "prompt": "x", "extra": ' + b'{"a": ' * 500 + b"1" + b"}" * 500 + b"}",
    b'{"model": "stub-model", "prompt": "x", "extra": ' + b"[" * 40 + b"]" * 40 + b"}",
    b'{"model": "stub-model", "prompt": "x", "temperature": NaN}',
    b'{"model": "stub-model", "prompt": "x", "temperature": -Infinity}',
    b'{"model": "stub-model", "prompt": "x", "temperature": 1e999}',
    b'{"model": "stub-model", "prompt": "x", "seed": ' + b"9" * 5000 + b"}",
    b'{"model": "stub-model", "prompt": "x", "stream_options": 5, "stream": true}',
    b'{"model": "stub-model", "prompt": "\xc3\x28"}',
])
def test_hostile_json_gets_400(raw):
    with stub_cluster() as c:
        _assert_openai_error(httpx.post(f"{c.url}/v1/completions", content=raw,
                                        headers={"content-type": "application/json"}, timeout=10), 400)
        assert not c.prefills[0].calls


def test_a_body_that_is_not_json_by_its_content_type_gets_415():
    with stub_cluster() as c:
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            resp = httpx.post(f"{c.url}/v1/completions", content=json.dumps(completion()),
                              headers={"content-type": content_type})
            _assert_openai_error(resp, 415, "unsupported_media_type")
        ok = httpx.post(f"{c.url}/v1/completions", content=json.dumps(completion()),
                        headers={"content-type": "application/json; charset=utf-8"}, timeout=10)
        assert ok.status_code == 200 and len(c.decodes[0].calls) == 1


@pytest.mark.parametrize("raw", [
    b'{"model": "stub-model", "prompt": "a\\ud800b", "max_tokens": 2}',
    b'{"model": "stub-model", "prompt": "hi", "stop": "\\udfff", "max_tokens": 2}',
    b'{"model": "stub-model", "messages": [{"role": "user", "content": "x\\ud83d"}]}',
    b'{"model": "stub-model", "prompt": "hi", "logit_bias": {"\\ud800": 1}}',
])
def test_lone_surrogates_anywhere_are_a_400_and_reach_no_node(raw):
    with stub_cluster() as c:
        path = "/v1/chat/completions" if b"messages" in raw else "/v1/completions"
        resp = httpx.post(f"{c.url}{path}", content=raw, headers={"content-type": "application/json"}, timeout=10)
        _assert_openai_error(resp, 400, "invalid_unicode")
        assert c.prefills[0].calls == [] and c.decodes[0].calls == []
        paired = b'{"model": "stub-model", "prompt": "a\\ud83d\\ude00b", "max_tokens": 2}'  # a valid pair: fine
        ok = httpx.post(f"{c.url}/v1/completions", content=paired, headers={"content-type": "application/json"},
                        timeout=10)
        assert ok.status_code == 200, ok.text


def test_a_client_gone_while_sending_its_body_is_counted_not_an_error():
    import socket

    with stub_cluster() as c:
        host, port = c.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{\"model\": ")
            assert wait_for(lambda: c.metric("disagg_router_requests_in_flight") == 1)
        assert wait_for(lambda: c.metric(
            'disagg_router_requests_total{endpoint="completions",mode="disagg",status="client_disconnected"}') == 1)
        assert c.metric("disagg_router_requests_in_flight") == 0 and not c.prefills[0].calls


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_sent():
    import socket

    with stub_cluster(max_body_bytes=64 * 1024) as c:
        host, port = c.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000000000\r\n\r\n{")  # a gigabyte announced, one byte sent
            head = sock.recv(65536).decode()
        assert head.startswith("HTTP/1.1 413") and "body_too_large" in head
        assert httpx.post(f"{c.url}/v1/completions", json=completion(), timeout=10).status_code == 200
