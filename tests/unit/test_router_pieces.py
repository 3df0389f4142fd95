"""Pure pieces of the router: the P/D protocol bodies, request validation and settings."""

from __future__ import annotations

import pytest

from core.errors import BadRequest, ConfigError, UpstreamError
from router import protocol, validation
from router.config import RouterConfig


def test_prefill_request_asks_for_one_token_and_keeps_the_kv():
    body = {"model": "m", "prompt": "hi", "max_tokens": 50, "stream": True, "stream_options": {"include_usage": True},
            "max_completion_tokens": 50, "min_tokens": 20, "n": 3, "best_of": 3, "logprobs": 2, "stop": ["x"]}
    req = protocol.prefill_request(body)
    assert req["max_tokens"] == 1 and req["max_completion_tokens"] == 1 and req["stream"] is False
    assert req["kv_transfer_params"]["do_remote_decode"] is True
    assert not {"stream_options", "min_tokens", "n", "best_of"} & set(req)  # each conflicts with one token
    assert req["logprobs"] == 2 and req["stop"] == ["x"]
    assert body["max_tokens"] == 50 and body["stream"] is True and body["min_tokens"] == 20  # client's body intact


def test_release_request_is_the_prefill_body_with_the_decode_params():
    params = {"do_remote_prefill": True, "remote_request_id": "r"}
    req = protocol.release_request({"model": "m", "prompt": "hi", "max_tokens": 50, "min_tokens": 60}, params)
    assert req["max_tokens"] == 1 and "min_tokens" not in req and req["kv_transfer_params"] == params


def test_decode_request_carries_the_prefill_params_and_the_original_request():
    params = protocol.kv_transfer_params({"kv_transfer_params": {"remote_block_ids": [1], "remote_engine_id": "e"}})
    req = protocol.decode_request({"model": "m", "prompt": "hi", "max_tokens": 50, "stream": True}, params)
    assert req["max_tokens"] == 50 and req["stream"] is True and req["kv_transfer_params"]["remote_engine_id"] == "e"


@pytest.mark.parametrize("response", [{}, {"kv_transfer_params": None}, {"kv_transfer_params": {}}])
def test_missing_kv_params_from_prefill_is_a_protocol_error(response):
    with pytest.raises(UpstreamError, match="kv_producer"):
        protocol.kv_transfer_params(response)


@pytest.mark.parametrize("endpoint,body,param", [
    ("completions", {"model": "m", "prompt": ["a", 5]}, "prompt[1]"),
    ("completions", {"model": "m", "prompt": [[1, 2], [True]]}, "prompt[1][0]"),
    ("completions", {"model": "m", "prompt": "x", "n": 129}, "n"),
    ("completions", {"model": "m", "prompt": "x", "temperature": True}, "temperature"),
    ("completions", {"model": "m", "prompt": "x", "max_tokens": -1}, "max_tokens"),
    ("completions", {"model": "m", "prompt": "x", "seed": 2**63}, "seed"),
    ("completions", {"model": "m", "prompt": "x", "kv_transfer_params": {}}, "kv_transfer_params"),
    ("completions", {"model": 5, "prompt": "x"}, "model"),
    ("completions", {"prompt": "x"}, "model"),
    ("completions", {"model": "m", "prompt": "x", "user": None}, "user"),  # OpenAI: a string, not nullable
    ("chat", {"model": "m", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ("chat", {"model": "m", "messages": [{"role": "user", "content": [{"type": "video", "x": 1}]}]},
     "messages[0].content[0].type"),
    ("chat", {"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ("chat", {"model": "m", "messages": [{"role": "user", "content": "x"}], "logprobs": 1}, "logprobs"),
    ("chat", {"model": "m", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 21}, "top_logprobs"),
    ("chat", {"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": ["a"] * 5}, "stop"),
])
def test_invalid_bodies_name_openais_param(endpoint, body, param):
    with pytest.raises(BadRequest) as info:
        validation.validate_request(endpoint, body)
    assert info.value.param == param and info.value.http_status == 400, info.value.message
    assert info.value.message.startswith(param) and isinstance(info.value.code, str)


def test_valid_bodies_pass_and_nulls_mean_defaults():
    assert validation.validate_request("completions", {"model": "m", "prompt": [1, 2, 3], "max_tokens": 0})
    assert validation.validate_request("completions", {"model": "m", "prompt": [[1], [2, 3]], "seed": -(2**63)})
    chat = {"model": "m", "messages": [{"role": "developer", "content": [{"type": "text", "text": "x"}]}],
            "logprobs": True, "top_logprobs": 2, "n": None, "stream": None, "stop": None, "top_k": 5,
            "min_tokens": None, "structured_outputs": {"choice": ["a"]}}
    got = validation.validate_request("chat", chat)
    assert "n" not in got and "stream" not in got and "stop" not in got  # OpenAI's nulls: the default
    assert got["top_k"] == 5 and "min_tokens" in got and got["structured_outputs"]  # extensions pass as sent
    assert got["logprobs"] is True and got["top_logprobs"] == 2


def test_deeply_nested_json_is_a_400_not_a_crash():
    with pytest.raises(BadRequest):
        validation.parse_body(b"[" * 100_000 + b"]" * 100_000)


@pytest.mark.parametrize("kwargs,match", [
    ({"mode": "disagg", "decode_urls": ("http://d:1",)}, "prefill"),
    ({"mode": "colocated", "decode_urls": ()}, "decode"),
    ({"mode": "sideways", "decode_urls": ("http://d:1",)}, "mode"),
    ({"mode": "colocated", "decode_urls": ("d:1",)}, "http://HOST:PORT"),
    ({"mode": "colocated", "decode_urls": ("http://d:1",), "request_timeout_s": 0}, "request_timeout_s"),
])
def test_router_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        RouterConfig(**kwargs)
