"""Running a multi-turn workload (bench.multiturn) against one OpenAI endpoint, turn by turn, with what each
node did for each turn.

Each turn is a streamed chat request (temperature 0, `ignore_eos`, `max_tokens` answer tokens); its answer
text joins the conversation's history. Turns go one at a time (`concurrency` 1, the default), so the nodes'
Prometheus counters read before and after a turn are that turn's: the node that served it (the node of the
serving role whose `vllm:prefix_cache_queries` moved most: prefill nodes in disagg mode, decode nodes in
colocated mode) and what it took from its prefix cache. With more concurrency only totals per node mean
anything, and turns get no node.

`reusable_tokens` is the ideal: the tokens of the longest prefix of the turn's prompt, in whole blocks,
that some earlier prompt of the run had in full blocks, on any node (never the last prompt token: vLLM
always computes that one). A router that always found the node holding it would hit exactly that. It needs
the prompt's token ids: the router's own tokenizer (router.tokenize, checked equal to vLLM's) from a model
folder; without one it is None.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from bench import kv_metrics
from bench.multiturn import Workload, messages
from router import block_hash

log = logging.getLogger(__name__)
QUERIES = "vllm:prefix_cache_queries_total"
SETTLE_S = 5.0  # the engine's counters can lag its answer by a step


@dataclass(frozen=True)
class NodeRef:
    name: str
    role: str  # prefill | decode
    vllm_url: str


@dataclass
class TurnResult:
    conversation: int
    turn: int
    ok: bool = False
    error: str | None = None
    ttft_s: float | None = None
    e2e_s: float | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    node: str | None = None
    reusable_tokens: int | None = None
    answer: str = ""
    node_deltas: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RunSettings:
    url: str
    model: str
    max_tokens: int = 32
    timeout_s: float = 300.0
    block_size: int = 128
    api_key: str | None = None


class Oracle:
    """The blocks every earlier prompt of the run had, to tell what a turn could have reused."""

    def __init__(self, tokenizer: Any, block_size: int) -> None:
        self.tokenizer, self.block_size, self.seen = tokenizer, block_size, set()

    def reusable(self, body: dict[str, Any]) -> int | None:
        ids = self.tokenizer.token_ids("chat", body) if self.tokenizer is not None else None
        if ids is None:
            return None
        chain = block_hash.block_hashes(ids[:len(ids) - 1], self.block_size)  # the last token is always computed
        hit = next((i for i, h in enumerate(chain) if h not in self.seen), len(chain))
        self.seen.update(block_hash.block_hashes(ids, self.block_size))
        return hit * self.block_size


async def _stream_turn(client: httpx.AsyncClient, settings: RunSettings, body: dict[str, Any],
                       result: TurnResult) -> str:
    """Send one streamed chat turn; its answer text (fills result's timings and usage)."""
    started_s, text = time.perf_counter(), []
    async with client.stream("POST", f"{settings.url}/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread())[:300]!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            chunk = json.loads(line[5:])
            if chunk.get("error"):
                raise RuntimeError(f"stream error: {chunk['error']}")
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content") or ""
                if piece and result.ttft_s is None:
                    result.ttft_s = time.perf_counter() - started_s
                text.append(piece)
            if chunk.get("usage"):
                result.prompt_tokens = chunk["usage"].get("prompt_tokens")
                result.output_tokens = chunk["usage"].get("completion_tokens")
    result.e2e_s = time.perf_counter() - started_s
    return "".join(text)


async def _snapshot(client: httpx.AsyncClient, nodes: list[NodeRef]) -> dict[str, dict[str, float]]:
    return {n.name: await kv_metrics.read(client, n.vllm_url) for n in nodes}


def _deltas(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per node, the counters (`..._total`) that moved."""
    out = {}
    for name, values in after.items():
        moved = {k: v - before[name].get(k, 0.0) for k, v in values.items()
                 if "_total" in k and v != before[name].get(k, 0.0)}
        out[name] = moved
    return out


async def _attribute(client: httpx.AsyncClient, nodes: list[NodeRef], before: dict[str, dict[str, float]],
                     result: TurnResult) -> None:
    """The turn's counters per node, and the serving node (read until the counters show the turn)."""
    serving = [n for n in nodes if n.role == "prefill"] or nodes
    deadline_s = time.monotonic() + SETTLE_S
    while True:
        deltas = _deltas(before, await _snapshot(client, nodes))
        moved = {n.name: deltas[n.name].get(QUERIES, 0.0) for n in serving}
        if max(moved.values(), default=0.0) > 0 or time.monotonic() > deadline_s:
            break
        await asyncio.sleep(0.2)
    result.node_deltas = deltas
    if moved and max(moved.values()) > 0:
        result.node = max(moved, key=moved.get)


async def run_workload(settings: RunSettings, workload: Workload, nodes: list[NodeRef],
                       tokenizer: Any = None) -> list[TurnResult]:
    """Every turn of `workload`, in its order, one at a time; failed turns end their conversation."""
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    answers: dict[int, list[str]] = {c.index: [] for c in workload.conversations}
    failed: set[int] = set()
    oracle, results = Oracle(tokenizer, settings.block_size), []
    async with httpx.AsyncClient(timeout=settings.timeout_s, headers=headers) as client:
        for conversation_index, turn in workload.order:
            result = TurnResult(conversation_index, turn)
            results.append(result)
            if conversation_index in failed:
                result.error = "an earlier turn of this conversation failed"
                continue
            conversation = workload.conversations[conversation_index]
            body = {"model": settings.model, "messages": messages(conversation, turn, answers[conversation_index]),
                    "max_tokens": settings.max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
                    "stream_options": {"include_usage": True}}
            result.reusable_tokens = oracle.reusable(body)
            before = await _snapshot(client, nodes) if nodes else {}
            try:
                result.answer = await _stream_turn(client, settings, body, result)
                answers[conversation_index].append(result.answer)
                result.ok = True
            except (httpx.HTTPError, RuntimeError, json.JSONDecodeError) as exc:
                result.error = f"{type(exc).__name__}: {exc}"[:500]
                failed.add(conversation_index)
                log.warning("conversation %d turn %d failed: %s", conversation_index, turn, result.error)
            if nodes:
                await _attribute(client, nodes, before, result)
    return results
