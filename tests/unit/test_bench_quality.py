"""`disagg bench quality`: the fixed prompt set, the P/D requests it sends (against a fake vLLM), the
comparison with colocated, and the report and plot."""

from __future__ import annotations

import json

import httpx
import pytest

from bench import quality, quality_report
from bench.quality import Comparison, Completion, Nodes, PromptResult
from bench.quality_prompts import LENGTHS, SMOKE_SET_SIZE, prompt_set

pytestmark = pytest.mark.timeout(60)
NODES = Nodes("http://prefill", "http://decode", "m", token="tok")


def test_prompt_set_is_fixed_sized_and_covers_every_length():
    prompts = prompt_set()
    assert len(prompts) == 60 and prompt_set() == prompts  # deterministic
    assert len({p.text for p in prompts}) == 60
    assert {p.length for p in prompts[:SMOKE_SET_SIZE]} == {name for name, _ in LENGTHS}
    words = {name: [len(p.text.split()) for p in prompts if p.length == name] for name, _ in LENGTHS}
    assert max(words["instruction"]) < 20 < min(words["short"]) and min(words["longer"]) > 950
    with pytest.raises(ValueError):
        prompt_set(61)


def _fake_vllm(seen: list[tuple[str, dict]]) -> httpx.Client:
    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append((request.url.host, body))
        assert request.headers["authorization"] == "Bearer tok"
        n = body["max_tokens"]
        choice = {"token_ids": list(range(100, 100 + n)), "logprobs": {"token_logprobs": [-0.5] * n},
                  "prompt_token_ids": [1, 2, 3]}
        response = {"choices": [choice], "usage": {"prompt_tokens": 3}}
        if "kv_transfer_params" in body and body["kv_transfer_params"].get("do_remote_decode"):
            response["kv_transfer_params"] = {"do_remote_prefill": True, "remote_request_id": "r"}
        return httpx.Response(200, json=response)

    return httpx.Client(transport=httpx.MockTransport(handle))


def test_disaggregated_request_is_prefill_one_token_then_decode_from_prompt_plus_it():
    seen: list[tuple[str, dict]] = []
    with _fake_vllm(seen) as client:
        out = quality.disaggregated(client, NODES, "hello", 4, "int8", "salt-1")
    (prefill_host, prefill), (decode_host, decode) = seen
    assert prefill_host == "prefill" and prefill["max_tokens"] == 1 and prefill["prompt"] == "hello"
    assert prefill["kv_transfer_params"] == {"do_remote_decode": True, "do_remote_prefill": False}
    assert decode_host == "decode" and decode["prompt"] == [1, 2, 3, 100] and decode["max_tokens"] == 3
    assert decode["kv_transfer_params"] == {"do_remote_prefill": True, "remote_request_id": "r",
                                            "kv_wire_dtype": "int8"}
    assert {prefill["cache_salt"], decode["cache_salt"]} == {"salt-1"}
    assert all(body["temperature"] == 0 and body["ignore_eos"] and body["logprobs"] == 1 for _, body in seen)
    assert out.token_ids == (100, 100, 101, 102) and len(out.logprobs) == 4 and out.prompt_tokens == 3


def test_comparison_with_colocated():
    ref = Completion((1, 2, 3, 4), (-0.1, -0.2, -0.3, -0.4), 10)
    assert Comparison.of(ref, ref) == Comparison(True, None, 0.0)
    other = Completion((1, 2, 9, 4), (-0.1, -0.25, -1.0, -0.4), 10)
    comparison = Comparison.of(ref, other)
    assert (comparison.identical, comparison.first_divergence) == (False, 2)
    assert comparison.mean_abs_logprob_diff == pytest.approx(0.025)  # positions 0 and 1 only
    assert Comparison.of(ref, Completion((5,), (-1.0,), 10)) == Comparison(False, 0, None)


def test_report_and_plot(tmp_path):
    ref = Completion((1, 2, 3, 4, 5), (-0.1,) * 5, 12)
    results = []
    for index in range(4):
        result = PromptResult(index, "short" if index % 2 else "long", 12 + index, ref)
        result.modes["native"] = ref
        result.modes["int8"] = ref if index else Completion((1, 2, 3, 9, 9), (-0.1, -0.1, -0.12, -2, -2), 12)
        results.append(result)
    data = quality_report.results_json(results, ["native", "int8"], {"model": "m", "num_prompts": 4, "max_tokens": 5})
    native, int8 = data["summary"]
    assert (native["identical"], native["identical_share"]) == (4, 1.0)
    assert (int8["identical"], int8["first_4_equal"], int8["first_divergence_min"]) == (3, 3, 3)
    text = quality_report.render_markdown(data)
    assert "| int8 | 0.2656 | 3 / 4 | 75.0 % | 3 / 4 | 3 |" in text and "quality.png" in text
    assert quality_report.plot(data, tmp_path / "q.png").stat().st_size > 1000
