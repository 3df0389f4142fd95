"""`disagg bench quality`'s measurement: the same greedy completions colocated and over the TCP transport in
each KV wire dtype, compared token by token and by the chosen tokens' log-probabilities. Pure HTTP (httpx).

It drives vLLM's P/D protocol itself against the two nodes (not through a router, which cannot yet pass a
wire dtype per request): the prefill node gets the prompt with `max_tokens=1` and
`kv_transfer_params={"do_remote_decode": true}`; the decode node gets the prompt's token ids plus that first
token, `max_tokens - 1`, and the returned `kv_transfer_params` plus `kv_wire_dtype`, so it pulls the prompt's
KV in that wire dtype and computes only the first token's KV itself (DESIGN §2). Colocated: the decode node
alone, no KV parameters. Every request is greedy (temperature 0) with `ignore_eos`, `logprobs=1` and its own
`cache_salt` per mode, so no mode is served from another mode's prefix cache (or a pull's restored KV).

Per prompt and wire dtype: whether the tokens equal colocated's, the first position where they differ, and
the mean |Δ log p| of the chosen tokens over the positions before that (same context, same token: what the
KV's perturbation did to the model's confidence).
"""

from __future__ import annotations

import copy
import statistics
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

COLOCATED = "colocated"
PREFILL_PARAMS = {"do_remote_decode": True, "do_remote_prefill": False}


class QualityError(RuntimeError):
    """A node refused a request or answered without what the comparison needs."""


@dataclass(frozen=True)
class Nodes:
    """Where the two vLLM servers are, and the cluster token (None: open nodes)."""

    prefill_url: str
    decode_url: str
    model: str
    token: str | None = None
    timeout_s: float = 300.0

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


@dataclass(frozen=True)
class Completion:
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]  # of the chosen tokens
    prompt_tokens: int


@dataclass(frozen=True)
class Comparison:
    """One prompt in one wire dtype against colocated."""

    identical: bool
    first_divergence: int | None  # index of the first differing token; None when identical
    mean_abs_logprob_diff: float | None  # over the tokens before the first divergence; None if there are none

    @classmethod
    def of(cls, reference: Completion, other: Completion) -> Comparison:
        length = min(len(reference.token_ids), len(other.token_ids))
        diverged = next((i for i in range(length) if reference.token_ids[i] != other.token_ids[i]), None)
        if diverged is None and len(reference.token_ids) != len(other.token_ids):
            diverged = length
        common = length if diverged is None else diverged
        diffs = [abs(a - b) for a, b in zip(reference.logprobs[:common], other.logprobs[:common])]
        return cls(diverged is None, diverged, statistics.fmean(diffs) if diffs else None)


def _post(client: httpx.Client, url: str, nodes: Nodes, body: dict[str, Any]) -> dict[str, Any]:
    resp = client.post(f"{url}/v1/completions", json=body, headers=nodes.headers, timeout=nodes.timeout_s)
    if resp.status_code != 200:
        raise QualityError(f"{url}: HTTP {resp.status_code}: {resp.text[:300]}")
    return resp.json()


def _body(nodes: Nodes, prompt: str | list[int], max_tokens: int, salt: str) -> dict[str, Any]:
    return {"model": nodes.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "logprobs": 1, "return_token_ids": True, "cache_salt": salt}


def _completion(response: dict[str, Any]) -> tuple[list[int], list[float], list[int] | None]:
    choice = response["choices"][0]
    token_ids = choice.get("token_ids")
    logprobs = (choice.get("logprobs") or {}).get("token_logprobs")
    if token_ids is None or logprobs is None:
        raise QualityError("a node answered without token_ids or logprobs")
    return list(token_ids), [float(x) for x in logprobs], choice.get("prompt_token_ids")


def colocated(client: httpx.Client, nodes: Nodes, prompt: str, max_tokens: int, salt: str) -> Completion:
    """The decode node alone: prefill and decode in one server."""
    response = _post(client, nodes.decode_url, nodes, _body(nodes, prompt, max_tokens, salt))
    token_ids, logprobs, _ = _completion(response)
    return Completion(tuple(token_ids), tuple(logprobs), int(response["usage"]["prompt_tokens"]))


def disaggregated(client: httpx.Client, nodes: Nodes, prompt: str, max_tokens: int, wire_dtype: str | None,
                  salt: str) -> Completion:
    """Prefill on one node, the KV pulled by the other in `wire_dtype` (None: the decode node's setting)."""
    prefill = _post(client, nodes.prefill_url, nodes,
                    {**_body(nodes, prompt, 1, salt), "kv_transfer_params": dict(PREFILL_PARAMS)})
    first_ids, first_logprobs, prompt_ids = _completion(prefill)
    params = copy.deepcopy(prefill.get("kv_transfer_params"))
    if not params or prompt_ids is None:
        raise QualityError("the prefill node returned no kv_transfer_params or prompt_token_ids (is it a "
                           "kv_producer with the tcp transport?)")
    if wire_dtype is not None:
        params["kv_wire_dtype"] = wire_dtype
    if max_tokens <= 1:
        return Completion(tuple(first_ids), tuple(first_logprobs), len(prompt_ids))
    body = {**_body(nodes, list(prompt_ids) + first_ids, max_tokens - 1, salt), "kv_transfer_params": params}
    token_ids, logprobs, _ = _completion(_post(client, nodes.decode_url, nodes, body))
    return Completion(tuple(first_ids + token_ids), tuple(first_logprobs + logprobs), len(prompt_ids))


@dataclass
class PromptResult:
    index: int
    length: str
    prompt_tokens: int
    colocated: Completion
    modes: dict[str, Completion] = field(default_factory=dict)

    def comparison(self, mode: str) -> Comparison:
        return Comparison.of(self.colocated, self.modes[mode])


ProgressCallback = Callable[[int, int, str], None]  # done, total, what


def run_prompts(nodes: Nodes, prompts: Sequence[Any], wire_dtypes: Sequence[str], max_tokens: int,
                on_progress: ProgressCallback | None = None) -> list[PromptResult]:
    """Every prompt (`bench.quality_prompts.Prompt`) colocated and in every wire dtype, in order."""
    run_id = uuid.uuid4().hex[:12]
    total = len(prompts) * (1 + len(wire_dtypes))
    done = 0
    results = []
    with httpx.Client() as client:
        for prompt in prompts:
            reference = colocated(client, nodes, prompt.text, max_tokens, f"q-{run_id}-{COLOCATED}")
            done += 1
            result = PromptResult(prompt.index, prompt.length, reference.prompt_tokens, reference)
            for wire_dtype in wire_dtypes:
                if on_progress is not None:
                    on_progress(done, total, f"prompt {prompt.index} ({reference.prompt_tokens} tokens) {wire_dtype}")
                result.modes[wire_dtype] = disaggregated(client, nodes, prompt.text, max_tokens, wire_dtype,
                                                         f"q-{run_id}-{wire_dtype}")
                done += 1
            results.append(result)
    if on_progress is not None:
        on_progress(done, total, "done")
    return results


def summary(results: Sequence[PromptResult], mode: str, prefix_tokens: int = 4) -> dict[str, Any]:
    """One wire dtype over every prompt: the share identical to colocated, divergence positions, |Δ log p|."""
    comparisons = [r.comparison(mode) for r in results]
    divergences = [c.first_divergence for c in comparisons if c.first_divergence is not None]
    diffs = [c.mean_abs_logprob_diff for c in comparisons if c.mean_abs_logprob_diff is not None]
    return {
        "mode": mode, "prompts": len(comparisons),
        "identical": sum(c.identical for c in comparisons),
        "identical_share": sum(c.identical for c in comparisons) / len(comparisons) if comparisons else None,
        f"first_{prefix_tokens}_equal": sum(c.first_divergence is None or c.first_divergence >= prefix_tokens
                                            for c in comparisons),
        "first_divergence_min": min(divergences) if divergences else None,
        "first_divergence_median": statistics.median(divergences) if divergences else None,
        "first_divergences": [c.first_divergence for c in comparisons],
        "mean_abs_logprob_diff": statistics.fmean(diffs) if diffs else None,
        "max_abs_logprob_diff": max(diffs) if diffs else None,
    }
