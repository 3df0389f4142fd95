"""`disagg bench kv-tier`'s summary and report from measured turns: second turns count only when another
prefill node than the first turn's served them; the tier's columns come from that node's deltas."""

from __future__ import annotations

import pytest

from bench.kv_tier_turns import Turn, as_json, report_markdown, summary

pytestmark = pytest.mark.timeout(30)


def _turn(conversation: int, turn: int, ttft_ms: float, node: int | None, hits: float = 0, ok: bool = True) -> Turn:
    return Turn(conversation, turn, ok, ttft_ms, ttft_ms + 100, 1530, node, hits, hits * 128, 0.0,
                "" if ok else "http_500")


def test_summary_compares_second_turns_on_the_other_node_with_first_turns():
    turns = [_turn(0, 1, 1000, 0), _turn(0, 2, 200, 1, hits=11),
             _turn(1, 1, 1200, 0), _turn(1, 2, 900, 0),  # same node: a local hit, not counted
             _turn(2, 1, 1100, 0), _turn(2, 2, 300, 1, hits=11)]
    s = summary(turns)
    assert s["conversations"] == 3 and s["second_turns_on_the_other_node"] == 2
    assert s["ttft_turn1_median_ms"] == 1100 and s["ttft_turn2_other_node_median_ms"] == 250
    assert s["ttft_ratio"] == pytest.approx(250 / 1100)
    assert s["turn2_tier_hit_blocks"] == 22 and s["turn2_external_tokens"] == 22 * 128
    assert as_json(turns)["summary"] == s


def test_report_has_the_summary_and_one_row_per_turn():
    turns = [_turn(0, 1, 1000, 0), _turn(0, 2, 200, 1, hits=11), _turn(1, 1, 1000, None, ok=False)]
    text = report_markdown(turns, {"command": "disagg bench kv-tier ..."}, "title")
    assert text.startswith("# title") and "- command: disagg bench kv-tier ..." in text
    assert "| 1000 | 200 | 0.20 | 11 |" in text
    assert "| 0 | 2 | prefill-2 | 1530 | 200 | 300 | 11 | 1408 | 0 |" in text
    assert "| 1 | 1 | ? |" in text and "failed: http_500" in text
