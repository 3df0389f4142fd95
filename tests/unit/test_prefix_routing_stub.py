"""A prefix-aware router in front of stub nodes that publish KV events: it subscribes to what each node's
/kv_event_sources lists, and sends each prompt to the prefill node whose events announced its prefix; without
events, or for another prompt, it spreads requests round robin; the decode role keeps its own policy."""

from __future__ import annotations

import httpx
import pytest

from router import block_hash
from tests.support.kv_event_publisher import FakePublisher, stored
from tests.support.stub_cluster import completion, stub_cluster, wait_for

pytestmark = pytest.mark.timeout(120)
PROMPT = list(range(1000, 1010))  # two full blocks of 4 and a partial one


def _served_by(cluster, body) -> list[int]:
    before = [len(s.calls) for s in cluster.prefills]
    resp = httpx.post(f"{cluster.url}/v1/completions", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    return [i for i, s in enumerate(cluster.prefills) if len(s.calls) > before[i]]


def test_each_prompt_goes_to_the_prefill_node_that_announced_its_prefix():
    publishers = [FakePublisher(), FakePublisher()]
    try:
        with stub_cluster(prefills=2, prefill_policy="prefix_aware") as c:
            assert sorted(_served_by(c, completion(prompt=PROMPT))[0] for _ in range(2)) == [0, 1]  # no events yet
            for stub, pub in zip(c.prefills, publishers):
                stub.kv_event_sources = pub.sources
            chain = block_hash.block_hashes(PROMPT, 4)

            def announced() -> bool:
                publishers[1].publish([stored(chain, 4, token_ids=PROMPT[:8])])
                return c.metric(f'disagg_router_kv_index_blocks{{node="{c.prefill_urls[1]}"}}') == 2

            assert wait_for(announced, 20), "the router did not learn node 1's blocks"
            assert [_served_by(c, completion(prompt=PROMPT + [i])) for i in range(3)] == [[1]] * 3
            assert c.metric(f'disagg_router_prefix_routes_total{{node="{c.prefill_urls[1]}",outcome="hit",'
                            'role="prefill"}') == 3
            assert c.metric('disagg_router_kv_events_hash_mismatch_total{node="%s"}' % c.prefill_urls[1]) == 0
            others = [_served_by(c, completion(prompt=list(range(50, 60))))[0] for _ in range(2)]
            assert sorted(others) == [0, 1]  # nothing cached anywhere: turns
    finally:
        for pub in publishers:
            pub.close()


def test_colocated_mode_routes_decode_nodes_by_their_announced_prefix():
    publishers = [FakePublisher(), FakePublisher()]
    try:
        with stub_cluster(prefills=0, decodes=2, mode="colocated", decode_policy="prefix_aware") as c:
            for stub, pub in zip(c.decodes, publishers):
                stub.kv_event_sources = pub.sources
            chain = block_hash.block_hashes(PROMPT, 4)

            def announced() -> bool:
                publishers[0].publish([stored(chain, 4, token_ids=PROMPT[:8])])
                return c.metric(f'disagg_router_kv_index_blocks{{node="{c.decode_urls[0]}"}}') == 2

            assert wait_for(announced, 20), "the router did not learn decode node 0's blocks"
            for i in range(3):
                before = [len(s.calls) for s in c.decodes]
                resp = httpx.post(f"{c.url}/v1/completions", json=completion(prompt=PROMPT + [i]), timeout=30)
                assert resp.status_code == 200, resp.text
                assert [len(s.calls) - b for s, b in zip(c.decodes, before)] == [1, 0]
            assert c.metric(f'disagg_router_prefix_routes_total{{node="{c.decode_urls[0]}",outcome="hit",'
                            'role="decode"}') == 3
    finally:
        for pub in publishers:
            pub.close()
