"""bench multiturn: the documented conversation generator and order, the ideal reuse, one run through a
router (stub nodes), the summary and the report with a column added by another metric source."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from bench import cli, multiturn, multiturn_report
from bench.multiturn_columns import NODE_COLUMNS, NodeColumn, add_node_column
from bench.multiturn_run import Oracle, RunSettings, run_workload
from tests.support.stub_cluster import stub_cluster

pytestmark = pytest.mark.timeout(120)


def test_the_generator_is_deterministic_and_shares_only_the_system_prompt():
    a = multiturn.synthetic(4, 3, 50, 80, 20, seed=5)
    b = multiturn.synthetic(4, 3, 50, 80, 20, seed=5)
    assert a == b and a != multiturn.synthetic(4, 3, 50, 80, 20, seed=6)
    assert len({c.system for c in a.conversations}) == 1 and len({c.user_turns[0] for c in a.conversations}) == 4
    assert len(a.order) == 12 and sorted(a.order) == [(c, t) for c in range(4) for t in range(3)]
    for c in range(4):  # each conversation's turns in order
        assert [t for cc, t in a.order if cc == c] == [0, 1, 2]
    assert a.order != tuple((c, t) for t in range(3) for c in range(4))  # not the lucky fixed order
    messages = multiturn.messages(a.conversations[1], 2, ["first answer", "second answer"])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]


def test_the_oracle_counts_full_blocks_seen_before_never_the_last_token():
    class Ids:
        def token_ids(self, endpoint, body):
            return body["ids"]

    oracle = Oracle(Ids(), 4)
    assert oracle.reusable({"ids": list(range(10))}) == 0
    assert oracle.reusable({"ids": list(range(10)) + [99] * 6}) == 8  # blocks 0..3, 4..7 seen
    assert oracle.reusable({"ids": list(range(8))}) == 4  # 8 tokens: the last block holds the last token
    assert Oracle(None, 4).reusable({"ids": [1]}) is None


def test_a_run_through_a_router_keeps_each_conversations_history():
    work = multiturn.synthetic(2, 2, 10, 10, 5, seed=1)
    with stub_cluster(prefills=2) as c:
        turns = asyncio.run(run_workload(RunSettings(url=c.url, model="stub-model", max_tokens=3), work, []))
        second = [call for s in c.decodes for call in s.calls if len(call.get("messages", [])) == 4]
    assert all(t.ok and t.ttft_s is not None and t.answer for t in turns), turns
    assert len(second) == 2 and {m["content"] for call in second for m in call["messages"]
                                 if m["role"] == "assistant"} == {t.answer for t in turns if t.turn == 0}


def _turn(conversation, turn, node, hits, queries, ttft_s, reusable):
    return {"conversation": conversation, "turn": turn, "ok": True, "error": None, "ttft_s": ttft_s, "e2e_s": 1.0,
            "prompt_tokens": queries, "output_tokens": 4, "node": node, "reusable_tokens": reusable, "answer": "a",
            "node_deltas": {node: {"vllm:prefix_cache_hits_total": hits, "vllm:prefix_cache_queries_total": queries,
                                   "vllm:prompt_tokens_by_source_total[local_compute]": queries - hits}}}


def test_summary_and_report_side_by_side_with_an_added_column():
    aware = [_turn(0, 0, "p1", 0, 300, 2.0, 0), _turn(1, 0, "p2", 0, 300, 2.0, 0),
             _turn(0, 1, "p1", 256, 400, 0.4, 256), _turn(1, 1, "p2", 256, 400, 0.5, 256)]
    rr = [_turn(0, 0, "p1", 0, 300, 2.0, 0), _turn(1, 0, "p2", 0, 300, 2.0, 0),
          _turn(0, 1, "p2", 0, 400, 2.1, 256), _turn(1, 1, "p2", 256, 400, 0.5, 256)]
    s = multiturn_report.summarize(aware)
    assert s["on_their_node"] == {"turns": 2, "count": 2, "fraction": 1.0} and s["hit_rate_vs_ideal"] == 1.0
    assert s["ttft_turn2_over_turn1"] == pytest.approx(0.225) and s["ttft_by_turn"]["2"]["count"] == 2
    assert multiturn_report.summarize(rr)["hit_rate_vs_ideal"] == 0.5
    saved = list(NODE_COLUMNS)
    try:
        add_node_column(NodeColumn("tier hit tokens", lambda d, kv: d.get("tier_hits_total")))
        results = {"model": "m", "timestamp": "t", "settings": {"max_tokens": 4},
                   "workload": {"conversations": 2, "turns": 2, "requests": 4, "note": "n"},
                   "nodes": [{"name": "p1", "role": "prefill", "kv_bytes_per_token": 1000},
                             {"name": "p2", "role": "prefill", "kv_bytes_per_token": None}],
                   "runs": [{"policy": p, "url": "u", "summary": multiturn_report.summarize(t), "router": {}}
                            for p, t in (("prefix_aware", aware), ("round_robin", rr))]}
        text = multiturn_report.render(results)
    finally:
        NODE_COLUMNS[:] = saved
    assert "| **hit rate vs ideal** | **100.0%** | **50.0%** |" in text
    assert "tier hit tokens" in text and "| p1 | prefill | 700 | 256 | 36.6% | 444 | 0.4 |" in text


def test_the_subcommand_is_registered():
    parser = argparse.ArgumentParser()
    cli.add_parsers(parser.add_subparsers())
    args = parser.parse_args(["bench", "multiturn", "--url", "prefix_aware=http://r:1", "--prefill-node", "http://p:2"])
    assert args.url == [("prefix_aware", "http://r:1")] and args.conversations == 8 and args.turns == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "multiturn", "--policies", "fastest"])
