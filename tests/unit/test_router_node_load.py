"""Node load (router.load): the scraped vLLM gauges kept current by the router's own calls in flight, the rates
measured between scrapes, and the `load_aware` policy picking the least loaded node, against stubs whose
/metrics report settable waiting/running/KV usage."""

from __future__ import annotations

import httpx
import pytest

from router import policies
from router.config import RouterConfig
from router.load import KV_USAGE, PREFILL_TIME_S, PREFILL_TOKENS, RUNNING, WAITING, LoadAware, NodeLoad, parse
from router.registry import Node, NodeRegistry
from tests.support.stub_cluster import completion, stub_cluster, wait_for

pytestmark = pytest.mark.timeout(60)

VLLM_PAGE = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 2.0
vllm:num_requests_running{engine="1",model_name="m"} 1.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
# TYPE vllm:request_prefill_time_seconds histogram
vllm:request_prefill_time_seconds_bucket{engine="0",le="+Inf",model_name="m"} 4.0
vllm:request_prefill_time_seconds_sum{engine="0",model_name="m"} 2.0
vllm:request_prefill_kv_computed_tokens_sum{engine="0",model_name="m"} 500.0
vllm:generation_tokens_total{engine="0",model_name="m"} 99.0
"""


def test_parse_sums_the_wanted_samples_over_label_sets():
    values = parse(VLLM_PAGE, [RUNNING, WAITING, KV_USAGE, PREFILL_TIME_S, PREFILL_TOKENS])
    assert values == {RUNNING: 3.0, WAITING: 3.0, KV_USAGE: 0.25, PREFILL_TIME_S: 2.0, PREFILL_TOKENS: 500.0}


def test_outstanding_is_the_scrape_corrected_by_the_routers_calls_since():
    load = NodeLoad()
    first, second = load.begin(100), load.begin(50)
    assert (load.outstanding, load.in_flight_tokens) == (2.0, 150)  # never scraped: the router's calls alone
    load.scraped({WAITING: 1.0, RUNNING: 4.0}, now_s=1.0)  # the node has 5, 2 of them the router's
    third = load.begin()
    assert load.outstanding == 6.0
    first()
    first()  # ending twice counts once
    second()
    assert (load.in_flight, load.outstanding, load.in_flight_tokens) == (1, 4.0, 0)
    load.scraped({WAITING: 0.0, RUNNING: 0.0}, now_s=2.0)
    assert load.outstanding == 1.0  # never fewer than the router's own calls in flight
    third()
    assert load.outstanding == 0.0


def test_rates_are_measured_between_scrapes():
    load = NodeLoad()
    load.scraped({PREFILL_TOKENS: 1000.0, PREFILL_TIME_S: 4.0}, now_s=1.0)
    assert load.prefill_tokens_per_s is None  # one scrape: nothing moved yet
    load.scraped({PREFILL_TOKENS: 1300.0, PREFILL_TIME_S: 5.0}, now_s=2.0)
    assert load.prefill_tokens_per_s == pytest.approx(300.0)
    load.scraped({PREFILL_TOKENS: 1300.0, PREFILL_TIME_S: 5.0}, now_s=3.0)
    assert load.prefill_tokens_per_s == pytest.approx(300.0)  # idle: kept
    load.scraped({PREFILL_TOKENS: 1500.0, PREFILL_TIME_S: 6.0}, now_s=4.0)
    assert load.prefill_tokens_per_s == pytest.approx(0.7 * 300 + 0.3 * 200)
    pulls = ("vllm:disagg_tcp_kv_pull_seconds_sum", "vllm:disagg_tcp_kv_pulled_bytes_total")
    load.scraped({pulls[0]: 1.0, pulls[1]: 1e6}, now_s=5.0, transfer=pulls)
    load.scraped({pulls[0]: 1.5, pulls[1]: 1e9}, now_s=6.0, transfer=pulls)
    assert load.pull_bytes_per_s == pytest.approx((1e9 - 1e6) / 0.5)


def test_load_aware_picks_the_least_loaded_and_takes_ties_in_turn():
    nodes = [Node("decode", f"http://d{i}", healthy=True) for i in range(3)]
    registry = NodeRegistry(nodes, {"prefill": policies.create("round_robin"), "decode": policies.create("load_aware")})
    assert isinstance(registry.policies["decode"], LoadAware)
    assert [registry.pick("decode").url for _ in range(3)] == ["http://d0", "http://d1", "http://d2"]
    nodes[0].load.scraped({RUNNING: 3.0}, 1.0)
    nodes[1].load.scraped({RUNNING: 1.0, KV_USAGE: 0.5}, 1.0)
    nodes[2].load.scraped({RUNNING: 1.0, KV_USAGE: 0.2}, 1.0)
    assert {registry.pick("decode").url for _ in range(4)} == {"http://d2"}
    nodes[2].load.begin()
    assert registry.pick("decode").url == "http://d1"  # d2 now has 2 outstanding


def test_an_unknown_policy_name_is_refused_when_the_config_is_built():
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="load_aware"):
        RouterConfig(mode="colocated", decode_urls=("http://d:1",), decode_policy="least_busy")


def _scraped(cluster, running: list[float]) -> bool:
    nodes = [n for n in httpx.get(f"{cluster.url}/health", timeout=5).json()["nodes"] if n["role"] == "decode"]
    return [n["load"]["running"] for n in nodes] == running


@pytest.mark.parametrize("mode", ["colocated", "disagg"])
def test_the_router_sends_each_request_to_the_least_loaded_decode_node(mode):
    config = {"decode_policy": "load_aware", "prefill_policy": "load_aware", "load_interval_s": 0.05}
    with stub_cluster(prefills=1, decodes=2, mode=mode, **config) as cluster:
        busy, idle = cluster.decodes
        busy.metrics = {RUNNING: 4.0, WAITING: 1.0, KV_USAGE: 0.4}
        idle.metrics = {RUNNING: 1.0, WAITING: 0.0, KV_USAGE: 0.1}
        assert wait_for(lambda: _scraped(cluster, [4.0, 1.0]))
        for _ in range(3):
            assert httpx.post(f"{cluster.url}/v1/completions", json=completion(), timeout=10).status_code == 200
        assert (len(busy.calls), len(idle.calls)) == (0, 3)
        busy.metrics, idle.metrics = {RUNNING: 0.0}, {RUNNING: 7.0}
        assert wait_for(lambda: _scraped(cluster, [0.0, 7.0]))
        assert httpx.post(f"{cluster.url}/v1/completions", json=completion(), timeout=10).status_code == 200
        assert (len(busy.calls), len(idle.calls)) == (1, 3)
