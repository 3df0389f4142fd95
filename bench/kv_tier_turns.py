"""`disagg bench kv-tier`'s measurement: two-turn conversations through the router, whose second turn lands on a
prefill node that did not see the first, and what the shared KV tier saves it.

Each conversation has its own document of `prefix_tokens` tokens (random text, unique per conversation, so no
conversation is served from another's cache). Turn 1 is that document and a question; turn 2 is turn 1, a
fixed assistant reply and a second question, sent after `think_s` (the writer stores turn 1's blocks in the
background meanwhile). Both are streamed chat requests, greedy, `max_tokens` each; TTFT is the first content
chunk's arrival, as the client sees it. With two prefill nodes and the router's round robin, turn 1 and turn 2
go to different nodes: which one served each turn, and the tier's hits and the prompt tokens vLLM counts as
external on it, are read from the prefill nodes' /metrics before and after each turn. Pure HTTP.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import httpx

from bench.client import CHAT_COMPLETIONS, send_streaming
from bench.datasets import Tokenizer, exact_text
from bench.kv_metrics import parse

REPLY = "Here is a summary of the document in a few points."
QUESTIONS = ("Summarize the document above.", "Which three words appear most often?")
HITS = "vllm:disagg_kv_tier_hit_blocks_total"
EXTERNAL = "vllm:prompt_tokens_by_source_total[external_kv_transfer]"
LOCAL_HIT = "vllm:prompt_tokens_by_source_total[local_cache_hit]"
PROMPT_TOKENS = "vllm:prompt_tokens_total"


@dataclass(frozen=True)
class Turn:
    """One measured turn: which prefill node served it (index into the given URLs; None: unknown)."""

    conversation: int
    turn: int
    ok: bool
    ttft_ms: float | None
    e2e_ms: float
    prompt_tokens: int | None
    node: int | None
    tier_hit_blocks: float
    external_tokens: float
    local_hit_tokens: float
    error: str = ""


async def run_conversations(router_url: str, prefill_urls: Sequence[str], model: str, tokenizer: Tokenizer, *,
                            conversations: int, prefix_tokens: int, max_tokens: int, think_s: float = 1.0,
                            seed: int = 0, timeout_s: float = 600.0) -> list[Turn]:
    """Every conversation's two turns, in order (one request at a time)."""
    rng, turns = random.Random(seed), []
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        for index in range(conversations):
            document, _ = exact_text(tokenizer, prefix_tokens, rng)
            history = [{"role": "user", "content": f"{document}\n\n{QUESTIONS[0]}"}]
            turns.append(await _turn(client, router_url, prefill_urls, model, history, max_tokens, index, 1))
            await asyncio.sleep(think_s)
            history += [{"role": "assistant", "content": REPLY}, {"role": "user", "content": QUESTIONS[1]}]
            turns.append(await _turn(client, router_url, prefill_urls, model, history, max_tokens, index, 2))
    return turns


async def _turn(client: httpx.AsyncClient, router_url: str, prefill_urls: Sequence[str], model: str,
                messages: list[dict[str, str]], max_tokens: int, conversation: int, turn: int) -> Turn:
    before = await _metrics(client, prefill_urls)
    payload = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
               "ignore_eos": True, "stream_options": {"include_usage": True}}
    result = await send_streaming(client, router_url.rstrip("/") + CHAT_COMPLETIONS, payload, timeout_s=600.0,
                                  run_start_s=time.perf_counter())
    await asyncio.sleep(0.5)  # the step's stats reach the node's /metrics just after its response
    deltas = [{key: a.get(key, 0.0) - b.get(key, 0.0) for key in a} for b, a in
              zip(before, await _metrics(client, prefill_urls))]
    served = [i for i, delta in enumerate(deltas) if delta.get(PROMPT_TOKENS, 0) > 0]
    node = served[0] if len(served) == 1 else None
    delta = deltas[node] if node is not None else {}
    return Turn(conversation, turn, result.ok, None if result.ttft_s is None else result.ttft_s * 1e3,
                result.e2e_s * 1e3, result.prompt_tokens, node, delta.get(HITS, 0.0), delta.get(EXTERNAL, 0.0),
                delta.get(LOCAL_HIT, 0.0), result.error_message)


async def _metrics(client: httpx.AsyncClient, urls: Sequence[str]) -> list[dict[str, float]]:
    responses = await asyncio.gather(*(client.get(f"{url.rstrip('/')}/metrics") for url in urls))
    return [parse(response.text) for response in responses]


def summary(turns: Sequence[Turn]) -> dict[str, Any]:
    """Median TTFT of first and second turns (the second on the other node only), their ratio, the tier's hits."""
    first = [t for t in turns if t.turn == 1 and t.ok and t.ttft_ms is not None]
    nodes = {t.conversation: t.node for t in first}
    second = [t for t in turns if t.turn == 2 and t.ok and t.ttft_ms is not None
              and t.node is not None and t.node != nodes.get(t.conversation)]
    ttft1 = statistics.median(t.ttft_ms for t in first) if first else None
    ttft2 = statistics.median(t.ttft_ms for t in second) if second else None
    return {"conversations": len(nodes), "failed_turns": sum(not t.ok for t in turns),
            "second_turns_on_the_other_node": len(second),
            "ttft_turn1_median_ms": ttft1, "ttft_turn2_other_node_median_ms": ttft2,
            "ttft_ratio": ttft2 / ttft1 if ttft1 and ttft2 is not None else None,
            "turn2_tier_hit_blocks": sum(t.tier_hit_blocks for t in second),
            "turn2_external_tokens": sum(t.external_tokens for t in second),
            "turn2_prompt_tokens": sum(t.prompt_tokens or 0 for t in second)}


def report_markdown(turns: Sequence[Turn], facts: dict[str, Any], title: str) -> str:
    """The report: the summary, then one row per turn (the KV tier's columns: hits, external tokens)."""
    s = summary(turns)
    ratio = f"{s['ttft_ratio']:.2f}" if s["ttft_ratio"] is not None else "n/a"
    lines = [f"# {title}", "", *(f"- {key}: {value}" for key, value in facts.items()), "",
             "| median TTFT turn 1 | median TTFT turn 2 (other node) | turn 2 / turn 1 | turn 2 tier hit blocks | "
             "turn 2 external / prompt tokens | failed turns |", "|---:|---:|---:|---:|---:|---:|",
             f"| {_ms(s['ttft_turn1_median_ms'])} | {_ms(s['ttft_turn2_other_node_median_ms'])} | {ratio} | "
             f"{s['turn2_tier_hit_blocks']:.0f} | {s['turn2_external_tokens']:.0f} / {s['turn2_prompt_tokens']} | "
             f"{s['failed_turns']} |", "",
             "| conversation | turn | prefill node | prompt tokens | TTFT ms | E2E ms | tier hit blocks | "
             "external tokens | local cache hit tokens |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in turns:
        node = "?" if t.node is None else f"prefill-{t.node + 1}"
        lines.append(f"| {t.conversation} | {t.turn} | {node} | {t.prompt_tokens} | {_ms(t.ttft_ms)} | "
                     f"{t.e2e_ms:.0f} | {t.tier_hit_blocks:.0f} | {t.external_tokens:.0f} | "
                     f"{t.local_hit_tokens:.0f} |" + (f" failed: {t.error}" if not t.ok else ""))
    return "\n".join(lines) + "\n"


def as_json(turns: Sequence[Turn]) -> dict[str, Any]:
    return {"summary": summary(turns), "turns": [asdict(t) for t in turns]}


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"
