"""Conditional disaggregation (router.decider): the cost model on its own, and the router following it against
stub nodes whose /metrics report load: short prompts stay on the decode node, long ones go remote, a saturated
prefill queue keeps work local; every decision counted and logged; either way the answer equals colocated."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from router.decider import CostInputs, DeciderSettings, estimate_prompt_tokens, weigh
from tests.support.stub_cluster import completion, stub_cluster, wait_for
from tests.support.stub_vllm import expected_tokens

pytestmark = pytest.mark.timeout(60)
SETTINGS = DeciderSettings(policy="conditional", prefill_tokens_per_s=250.0, remote_overhead_s=0.1,
                           max_prefill_wait_s=10.0)
LONG_PROMPT = " ".join(["alpha beta gamma delta"] * 150)  # 3,450 characters: ~863 tokens estimated
SHORT_PROMPT = "hello there"


def inputs(**values) -> CostInputs:
    base = dict(prompt_tokens=40, prefill_tokens_per_s=250.0, kv_bytes_per_token=46_080, link_bytes_per_s=1e9,
                prefill_wait_s=0.0, decode_outstanding=1.0, arrivals_per_s=0.0)
    return CostInputs(**{**base, **values})


def test_short_prompts_stay_local_and_long_ones_go_remote():
    short = weigh(inputs(prompt_tokens=40), SETTINGS)
    assert short.local_cost_s == pytest.approx(40 / 250)
    assert short.remote_cost_s == pytest.approx(0.1 + 40 * 46_080 / 1e9)
    assert (short.remote, short.reason) == (True, "remote_cheaper")  # 0.16 s of stall > 0.102 s
    tiny = weigh(inputs(prompt_tokens=16), SETTINGS)  # 0.064 s of stall < 0.1007 s
    assert (tiny.remote, tiny.reason) == (False, "local_cheaper")
    long = weigh(inputs(prompt_tokens=1400), SETTINGS)
    assert (long.remote, long.reason) == (True, "remote_cheaper")
    assert long.local_cost_s == pytest.approx(5.6)


def test_an_idle_decode_node_prefills_itself_unless_requests_keep_arriving():
    assert not weigh(inputs(prompt_tokens=1400, decode_outstanding=0.0), SETTINGS).remote
    busy = weigh(inputs(prompt_tokens=1400, decode_outstanding=0.0, arrivals_per_s=0.5), SETTINGS)
    assert busy.remote and busy.local_cost_s == pytest.approx(5.6 * 0.5 * 5.6 / 2)


def test_a_saturated_prefill_queue_or_no_prefill_node_keeps_work_local():
    full = weigh(inputs(prompt_tokens=1400, decode_outstanding=4.0, prefill_wait_s=12.0), SETTINGS)
    assert (full.remote, full.reason) == (False, "prefill_queue_full")
    queued = weigh(inputs(prompt_tokens=200, decode_outstanding=1.0, prefill_wait_s=2.0), SETTINGS)
    assert (queued.remote, queued.reason) == (False, "local_cheaper")  # 0.8 s of stall < 2.1 s of wait
    assert weigh(inputs(prefill_wait_s=None), SETTINGS).reason == "no_prefill_node"


def test_prompt_tokens_are_estimated_from_ids_text_and_messages():
    assert estimate_prompt_tokens({"prompt": [1, 2, 3, 4]}) == 4
    assert estimate_prompt_tokens({"prompt": "x" * 400}) == 101
    assert estimate_prompt_tokens({"prompt": ["x" * 40, [1, 2]]}) == 11 + 2
    chat = {"messages": [{"role": "system", "content": "x" * 80},
                         {"role": "user", "content": [{"type": "text", "text": "y" * 40}]}]}
    assert estimate_prompt_tokens(chat) == (21 + 4) + (11 + 4)


def test_bad_decider_settings_are_config_errors():
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="conditional"):
        DeciderSettings(policy="sometimes")
    with pytest.raises(ConfigError, match="prefill_tokens_per_s"):
        DeciderSettings(prefill_tokens_per_s=0)


def _decisions(cluster) -> dict[tuple[str, str], float]:
    found = {}
    for line in cluster.metrics().splitlines():
        if line.startswith("disagg_router_decisions_total{"):
            labels = dict(part.split("=") for part in line[line.index("{") + 1:line.index("}")].split(","))
            found[(labels["decision"].strip('"'), labels["reason"].strip('"'))] = float(line.rsplit(" ", 1)[1])
    return found


def _scraped(cluster, role: str, key: str, value: float) -> bool:
    nodes = httpx.get(f"{cluster.url}/health", timeout=5).json()["nodes"]
    return all(n["load"][key] == value for n in nodes if n["role"] == role)


def _ask(cluster, prompt: str, stream: bool = False) -> str:
    body = completion(prompt=prompt, max_tokens=6, stream=stream)
    if not stream:
        return httpx.post(f"{cluster.url}/v1/completions", json=body, timeout=10).json()["choices"][0]["text"]
    text = ""
    with httpx.stream("POST", f"{cluster.url}/v1/completions", json=body, timeout=10) as resp:
        for line in resp.iter_lines():
            if line.startswith("data:") and not line.endswith("[DONE]"):
                text += json.loads(line[5:])["choices"][0]["text"]
    return text


def test_the_router_follows_the_cost_model_counts_and_logs_each_decision(caplog):
    with stub_cluster(decider=SETTINGS, load_interval_s=0.05) as cluster:
        (prefill,), (decode,) = cluster.prefills, cluster.decodes
        decode.metrics = {"vllm:num_requests_running": 2.0, "vllm:num_requests_waiting": 0.0,
                          "vllm:kv_cache_usage_perc": 0.1}
        prefill.metrics = {"vllm:num_requests_running": 0.0, "vllm:num_requests_waiting": 0.0}
        assert wait_for(lambda: _scraped(cluster, "decode", "running", 2.0))
        with caplog.at_level(logging.INFO, logger="router.requests"):
            for stream in (False, True):
                assert _ask(cluster, SHORT_PROMPT, stream) == "".join(expected_tokens({}, SHORT_PROMPT)[:6])
                assert _ask(cluster, LONG_PROMPT, stream) == "".join(expected_tokens({}, LONG_PROMPT)[:6])
        remote_calls = [c for c in prefill.calls if c.get("kv_transfer_params")]
        assert len(remote_calls) == 2 and all(LONG_PROMPT in c["prompt"] for c in remote_calls)
        local_calls = [c for c in decode.calls if c.get("prompt") == SHORT_PROMPT]
        assert len(local_calls) == 2 and not any(c.get("kv_transfer_params") for c in local_calls)
        assert _decisions(cluster) == {("local", "local_cheaper"): 2, ("remote", "remote_cheaper"): 2}
        logged = [json.loads(r.getMessage().removeprefix("request ")) for r in caplog.records
                  if r.getMessage().startswith("request {")]
        assert sorted((t["decision"], t["decision_reason"]) for t in logged) == \
            [("local", "local_cheaper")] * 2 + [("remote", "remote_cheaper")] * 2
        assert all(t["decision_local_cost_s"] > 0 and t["decision_remote_cost_s"] > 0 for t in logged)

        prefill.metrics = {"vllm:num_requests_running": 1.0, "vllm:num_requests_waiting": 60.0}
        assert wait_for(lambda: _scraped(cluster, "prefill", "waiting", 60.0))
        assert _ask(cluster, LONG_PROMPT) == "".join(expected_tokens({}, LONG_PROMPT)[:6])
        assert _decisions(cluster)[("local", "prefill_queue_full")] == 1
        assert len([c for c in prefill.calls if c.get("kv_transfer_params")]) == 2  # no new prefill


@pytest.mark.parametrize("policy, decision", [("always", "remote"), ("never", "local")])
def test_a_forced_policy_decides_every_request_the_same_way(policy, decision):
    with stub_cluster(decider=DeciderSettings(policy=policy)) as cluster:
        assert _ask(cluster, SHORT_PROMPT) == "".join(expected_tokens({}, SHORT_PROMPT)[:6])
        assert _ask(cluster, LONG_PROMPT) == "".join(expected_tokens({}, LONG_PROMPT)[:6])
        assert _decisions(cluster) == {(decision, "forced"): 2}
        assert len(cluster.prefills[0].calls) == (2 if policy == "always" else 0)
