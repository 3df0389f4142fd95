"""Bad input reaching real vLLM nodes through the router: a 4xx in OpenAI's shape, and the cluster keeps serving."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.integration.prompts import prompt_of

pytestmark = pytest.mark.integration


def _bad_requests(cluster):
    model = cluster.model_name
    too_long = prompt_of(cluster.model_dir, 2100, tag="[too-long]")
    return [
        ("completions", b'{"model": ', 400),
        ("completions", json.dumps({"prompt": "hi"}).encode(), 400),
        ("completions", json.dumps({"model": model, "prompt": 5}).encode(), 400),
        ("completions", json.dumps({"model": model, "prompt": "hi", "max_tokens": 0}).encode(), 400),
        ("completions", json.dumps({"model": model, "prompt": "hi", "max_tokens": -1}).encode(), 400),
        ("completions", json.dumps({"model": model, "prompt": "hi", "temperature": "hot"}).encode(), 400),
        ("completions", json.dumps({"model": model, "prompt": too_long, "max_tokens": 4}).encode(), 400),
        ("completions", json.dumps({"model": "unknown-model", "prompt": "hi"}).encode(), 404),
        ("chat", json.dumps({"model": model, "messages": []}).encode(), 400),
        ("chat", json.dumps({"model": model}).encode(), 400),
        ("chat", json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}],
                             "max_tokens": 0}).encode(), 400),
        ("chat", json.dumps({"model": model, "messages": [{"role": "user", "content": too_long}],
                             "max_tokens": 4}).encode(), 400),
    ]


@pytest.mark.parametrize("url_attr", ["router_url", "baseline_url"])
def test_bad_requests_get_4xx_and_servers_keep_serving(cluster, url_attr):
    url = getattr(cluster, url_attr)
    for endpoint, payload, status in _bad_requests(cluster):
        path = "/v1/completions" if endpoint == "completions" else "/v1/chat/completions"
        resp = httpx.post(url + path, content=payload, headers={"content-type": "application/json"}, timeout=120)
        assert resp.status_code == status, (payload[:80], resp.status_code, resp.text[:300])
        error = resp.json()["error"]
        assert set(error) >= {"message", "type", "param", "code"} and error["message"], error
    ok = httpx.post(url + "/v1/completions", json={"model": cluster.model_name, "prompt": "Hello", "max_tokens": 3},
                    timeout=120)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3
