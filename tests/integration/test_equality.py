"""Greedy output through prefill -> NIXL -> decode equals the same request served colocated, token for token,
and the decode node really pulled the KV (vLLM counts those prompt tokens as external_kv_transfer)."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.integration import vllm_metrics
from tests.integration.prompts import prompt_of

pytestmark = pytest.mark.integration
MAX_TOKENS = 16
SIZES = {"short": 10, "medium": 300, "long": 1500}


def _body(cluster, endpoint: str, prompt: str, stream: bool) -> dict:
    body = {"model": cluster.model_name, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": stream}
    if endpoint == "completions":
        body["prompt"] = prompt
    else:
        body["messages"] = [{"role": "user", "content": prompt}]
    if stream:
        body["stream_options"] = {"include_usage": True}
    else:
        body["return_token_ids"] = True
    return body


def run(url: str, endpoint: str, body: dict) -> dict:
    """Send one request; return its output text, token ids (unary) and usage."""
    path = "/v1/completions" if endpoint == "completions" else "/v1/chat/completions"
    if not body.get("stream"):
        resp = httpx.post(url + path, json=body, timeout=300)
        assert resp.status_code == 200, resp.text
        data = resp.json()
        choice = data["choices"][0]
        text = choice["text"] if endpoint == "completions" else choice["message"]["content"]
        return {"text": text, "token_ids": choice.get("token_ids"), "usage": data["usage"]}
    pieces, usage = [], None
    with httpx.stream("POST", url + path, json=body, timeout=300) as resp:
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            assert "error" not in chunk, chunk
            usage = chunk.get("usage") or usage
            for choice in chunk["choices"]:
                pieces.append(choice["text"] if endpoint == "completions" else choice["delta"].get("content") or "")
    return {"text": "".join(pieces), "token_ids": None, "usage": usage}


def disagg_and_colocated(cluster, endpoint: str, body: dict,
                         router_url: str | None = None) -> tuple[dict, dict, dict[str, float]]:
    """The request through the disagg router (the cluster's, or `router_url`), then the baseline; with the
    decode node's metric deltas over the disaggregated request."""
    before = vllm_metrics.read(cluster.decode_vllm_url)
    disagg = run(router_url or cluster.router_url, endpoint, body)
    after = vllm_metrics.read(cluster.decode_vllm_url)
    deltas = {key: vllm_metrics.delta(before, after, key) for key in after}
    return disagg, run(cluster.baseline_url, endpoint, body), deltas


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("endpoint", ["completions", "chat"])
@pytest.mark.parametrize("size", list(SIZES))
def test_disagg_equals_colocated(cluster, size, endpoint, stream):
    prompt = prompt_of(cluster.model_dir, SIZES[size], tag=f"[{size}-{endpoint}-{stream}]")
    disagg, colocated, deltas = disagg_and_colocated(cluster, endpoint, _body(cluster, endpoint, prompt, stream))

    assert disagg["text"] == colocated["text"]
    assert disagg["token_ids"] == colocated["token_ids"]
    if not stream:
        assert len(disagg["token_ids"]) == disagg["usage"]["completion_tokens"] > 0
    prompt_tokens = disagg["usage"]["prompt_tokens"]
    assert prompt_tokens == colocated["usage"]["prompt_tokens"]
    assert SIZES[size] * 0.9 <= prompt_tokens <= SIZES[size] + 60  # chat adds its template
    # The decode node took the prompt's KV from the transfer, not from its own prefill:
    pulled = deltas.get("vllm:prompt_tokens_by_source_total[external_kv_transfer]", 0.0)
    computed = deltas.get("vllm:prompt_tokens_by_source_total[local_compute]", 0.0)
    assert pulled >= prompt_tokens - 1 and computed <= 1, (pulled, computed)
    assert deltas.get("vllm:nixl_bytes_transferred_sum", 0.0) > 0
