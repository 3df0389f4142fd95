"""Pure pieces of the router: the P/D protocol bodies, request validation and settings."""

from __future__ import annotations

import pytest

from core.errors import BadRequest, ConfigError, UpstreamError
from router import protocol, validation
from router.config import RouterConfig


def test_prefill_request_asks_for_one_token_and_keeps_the_kv():
    body = {"model": "m", "prompt": "hi", "max_tokens": 50, "stream": True, "stream_options": {"include_usage": True},
            "max_completion_tokens": 50}
    req = protocol.prefill_request(body)
    assert req["max_tokens"] == 1 and req["max_completion_tokens"] == 1 and req["stream"] is False
    assert "stream_options" not in req and req["kv_transfer_params"]["do_remote_decode"] is True
    assert body["max_tokens"] == 50 and body["stream"] is True  # the client's body is untouched


def test_decode_request_carries_the_prefill_params_and_the_original_request():
    params = protocol.kv_transfer_params({"kv_transfer_params": {"remote_block_ids": [1], "remote_engine_id": "e"}})
    req = protocol.decode_request({"model": "m", "prompt": "hi", "max_tokens": 50, "stream": True}, params)
    assert req["max_tokens"] == 50 and req["stream"] is True and req["kv_transfer_params"]["remote_engine_id"] == "e"


@pytest.mark.parametrize("response", [{}, {"kv_transfer_params": None}, {"kv_transfer_params": {}}])
def test_missing_kv_params_from_prefill_is_a_protocol_error(response):
    with pytest.raises(UpstreamError, match="kv_producer"):
        protocol.kv_transfer_params(response)


@pytest.mark.parametrize("body,param", [
    ({"model": "m", "prompt": ["a", ""]}, "prompt"),
    ({"model": "m", "prompt": [[1, 2], [True]]}, "prompt"),
    ({"model": "m", "prompt": "x", "n": 2}, "n"),
    ({"model": "m", "prompt": "x", "temperature": True}, "temperature"),
    ({"model": "m", "prompt": "x", "max_tokens": 2**40}, "max_tokens"),
    ({"model": "m", "prompt": "x", "kv_transfer_params": {}}, "kv_transfer_params"),
    ({"model": "", "prompt": "x"}, "model"),
])
def test_invalid_completion_bodies(body, param):
    with pytest.raises(BadRequest) as info:
        validation.validate_completion(body)
    assert info.value.param == param and info.value.http_status == 400


def test_valid_bodies_pass():
    validation.validate_completion({"model": "m", "prompt": [1, 2, 3], "max_tokens": 3, "temperature": 0})
    validation.validate_chat({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]})


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
