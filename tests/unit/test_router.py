"""The router against stub vLLM servers speaking the P/D protocol, over real loopback sockets."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack

import httpx
import pytest

from router.app import create_app
from router.config import RouterConfig
from tests.support.stub_cluster import stub_cluster, wait_for
from tests.support.stub_vllm import create_stub, expected_tokens
from tests.support.threaded_server import serve


@pytest.fixture()
def cluster():
    """A disagg router in front of a stub prefill and a stub decode server; yields (url, prefill, decode)."""
    prefill_app, prefill = create_stub("prefill", engine_id="prefill-engine")
    decode_app, decode = create_stub("decode")
    with ExitStack() as stack:
        p_url = stack.enter_context(serve(prefill_app))
        d_url = stack.enter_context(serve(decode_app))
        config = RouterConfig(mode="disagg", prefill_urls=(p_url,), decode_urls=(d_url,), health_interval_s=0.2)
        url = stack.enter_context(serve(create_app(config)))
        yield url, prefill, decode


def _completion(**extra):
    return {"model": "stub-model", "prompt": "hello there", "max_tokens": 5, "temperature": 0, **extra}


def test_disagg_runs_prefill_then_decode_with_kv_params(cluster):
    url, prefill, decode = cluster
    resp = httpx.post(f"{url}/v1/completions", json=_completion(), timeout=10)
    assert resp.status_code == 200, resp.text
    assert len(prefill.calls) == 1 and prefill.calls[0]["max_tokens"] == 1
    assert prefill.calls[0]["kv_transfer_params"]["do_remote_decode"] is True
    assert decode.pulled and decode.pulled[0]["remote_engine_id"] == "prefill-engine"
    # the decode node continues from the prompt's ids + the prefill's first token, with one token less to make
    first = prefill.calls[0]
    assert first["return_token_ids"] is True
    assert decode.calls[0]["max_tokens"] == 4 and decode.calls[0]["temperature"] == 0
    assert isinstance(decode.calls[0]["prompt"], list) and len(decode.calls[0]["prompt"]) == 3  # 2 words + 1
    assert resp.json()["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
    assert resp.json()["choices"][0]["text"] == "".join(expected_tokens(_completion()))
    assert "prefill;dur=" in resp.headers["server-timing"]


def test_chat_stream_is_relayed_in_order_and_ends_with_done(cluster):
    url, _, decode = cluster
    body = {"model": "stub-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
            "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=10) as resp:
        assert resp.status_code == 200
        lines = [line for line in resp.iter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[5:]) for line in lines[:-1]]
    text = "".join(c["choices"][0]["delta"]["content"] for c in chunks if c["choices"])
    assert text == "".join(expected_tokens(body))
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    assert decode.calls[0]["stream"] is True and decode.pulled


def test_stream_cut_by_decode_node_becomes_error_event_then_done(cluster):
    url, _, _ = cluster
    with httpx.stream("POST", f"{url}/v1/completions", json=_completion(prompt="CUTSTREAM", stream=True),
                      timeout=10) as resp:
        assert resp.status_code == 200
        raw = resp.read().decode()
    assert "event: error" in raw
    error_line = [line for line in raw.splitlines() if line.startswith("data:") and "error" in line][-1]
    assert json.loads(error_line[5:])["error"]["code"] == "decode_stream_cut"
    assert raw.rstrip().endswith("data: [DONE]")


@pytest.mark.parametrize("prompt,status,code", [("FAIL500", 502, "prefill_http_500"), ("NOKV", 502, "prefill_protocol")])
def test_prefill_failures_are_explicit_502s_without_fallback(prompt, status, code):
    with stub_cluster(colocated_fallback=False) as c:
        resp = httpx.post(f"{c.url}/v1/completions", json=_completion(prompt=prompt), timeout=10)
        assert resp.status_code == status
        assert resp.json()["error"]["code"] == code
        assert not c.decodes[0].calls, "decode must not run after a failed prefill"
        assert c.metric(f'disagg_router_failures_total{{reason="{code}"}}') == 1


def test_unknown_model_is_relayed_as_404_in_openai_shape(cluster):
    url, _, _ = cluster
    resp = httpx.post(f"{url}/v1/completions", json=_completion(model="nope"), timeout=10)
    assert resp.status_code == 404
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and "nope" in err["message"]


@pytest.mark.parametrize("payload,param", [
    (b"{not json", None),
    (b"[1, 2]", None),
    (json.dumps({"prompt": "x"}).encode(), "model"),
    (json.dumps({"model": "stub-model"}).encode(), "prompt"),
    (json.dumps({"model": "stub-model", "prompt": "x", "max_tokens": -3}).encode(), "max_tokens"),
    (json.dumps({"model": "stub-model", "prompt": "x", "max_tokens": "5"}).encode(), "max_tokens"),
    (json.dumps({"model": "stub-model", "prompt": "x", "stream": "yes"}).encode(), "stream"),
    (b"\xff\xfe\x00garbage", None),
])
def test_bad_completion_requests_get_400_and_router_keeps_serving(cluster, payload, param):
    url, prefill, _ = cluster
    resp = httpx.post(f"{url}/v1/completions", content=payload, headers={"content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]
    assert not prefill.calls
    assert httpx.post(f"{url}/v1/completions", json=_completion(), timeout=10).status_code == 200


@pytest.mark.parametrize("body,param", [
    ({"model": "stub-model", "prompt": "x", "max_tokens": 0}, "max_tokens"),  # OpenAI allows 0, vLLM does not
    ({"model": "stub-model", "prompt": ""}, "prompt"),  # OpenAI allows "", vLLM does not
])
def test_what_openai_accepts_and_vllm_refuses_is_vllms_400_and_no_kv_is_left(cluster, body, param):
    url, prefill, decode = cluster
    resp = httpx.post(f"{url}/v1/completions", json=body, timeout=10)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["code"] == "invalid_value"
    if decode.calls:  # refused by the decode node after a prefill: the prefilled KV is released
        assert wait_for(lambda: len(decode.released) == 1) and len(decode.calls) == 1
    assert wait_for(lambda: prefill.active == decode.active == 0)


@pytest.mark.parametrize("messages", [[], "hi", [{"content": "no role"}], [{"role": "user", "content": 5}],
                                      [{"role": "wizard", "content": "hi"}]])
def test_bad_chat_messages_get_400(cluster, messages):
    url, _, _ = cluster
    resp = httpx.post(f"{url}/v1/chat/completions", json={"model": "stub-model", "messages": messages})
    assert resp.status_code == 400 and resp.json()["error"]["param"].startswith("messages")


def test_body_over_limit_gets_413(cluster):
    url, _, _ = cluster
    resp = httpx.post(f"{url}/v1/completions", json=_completion(prompt="x" * (5 * 1024 * 1024)), timeout=30)
    assert resp.status_code == 413 and resp.json()["error"]["type"] == "invalid_request_error"


def test_unknown_route_is_404_in_openai_shape(cluster):
    url, _, _ = cluster
    resp = httpx.get(f"{url}/v1/nothing")
    assert resp.status_code == 404 and "error" in resp.json()


def test_health_models_and_metrics(cluster):
    url, _, _ = cluster
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and {n["role"] for n in health["nodes"]} == {"prefill", "decode"}
    assert httpx.get(f"{url}/v1/models").json()["data"][0]["id"] == "stub-model"
    httpx.post(f"{url}/v1/completions", json=_completion(), timeout=10)
    text = httpx.get(f"{url}/metrics").text
    assert 'disagg_router_requests_total{endpoint="completions",mode="disagg",status="ok"} 1.0' in text
    assert "disagg_router_prefill_seconds_count 1.0" in text


def test_down_decode_node_gives_503_until_it_is_back():
    prefill_app, _ = create_stub("prefill")
    decode_app, decode = create_stub("decode")
    decode.healthy = False
    with serve(prefill_app) as p_url, serve(decode_app) as d_url:
        config = RouterConfig(mode="disagg", prefill_urls=(p_url,), decode_urls=(d_url,), health_interval_s=0.1)
        with serve(create_app(config)) as url:
            resp = httpx.post(f"{url}/v1/completions", json=_completion(), timeout=10)
            assert resp.status_code == 503 and resp.json()["error"]["code"] == "no_decode_node"
            assert httpx.get(f"{url}/health").status_code == 503
            decode.healthy = True
            deadline_s = time.monotonic() + 5
            while httpx.get(f"{url}/health").status_code != 200 and time.monotonic() < deadline_s:
                time.sleep(0.05)
            assert httpx.post(f"{url}/v1/completions", json=_completion(), timeout=10).status_code == 200


def test_colocated_mode_sends_the_request_unchanged_to_one_node():
    decode_app, decode = create_stub("decode")
    with serve(decode_app) as d_url:
        with serve(create_app(RouterConfig(mode="colocated", decode_urls=(d_url,)))) as url:
            resp = httpx.post(f"{url}/v1/completions", json=_completion(), timeout=10)
    assert resp.status_code == 200
    assert "kv_transfer_params" not in decode.calls[0] and not decode.pulled


def test_a_slow_node_stays_up_until_it_misses_three_checks_in_a_row():
    import asyncio

    from router.registry import Node, NodeRegistry

    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/info":
            return httpx.Response(404)
        calls["n"] += 1
        if calls["n"] in (2, 3, 5, 6, 7):
            raise httpx.ReadTimeout("busy", request=request)
        return httpx.Response(200)

    async def scenario() -> list[bool]:
        node = Node("decode", "http://node")
        registry = NodeRegistry([node])
        seen = []
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            for _ in range(7):
                await registry.check(client, node)
                seen.append(node.healthy)
        return seen

    # ok, slow, slow, ok (resets), slow, slow, slow -> down on the third slow check in a row
    assert asyncio.run(scenario()) == [True, True, True, True, True, True, False]
