"""The `prefix_aware` routing policy: the node that already holds the longest prefix of the prompt, unless
it is too busy.

For each candidate node the policy estimates what serving the request there costs, in prompt tokens to
compute:

    cost(node) = (prompt_tokens - cached_tokens(node)) + load_weight * load(node) * mean_uncached_tokens

- `cached_tokens(node)`: the tokens of the longest prefix of the prompt's chained block hashes the node's
  prefix cache holds (router.prefix_index, fed by the node's KV events), a whole number of its blocks;
- `load(node)`: requests on the node now, from a `router.node_load.LoadSource` (the router's in-flight
  count by default);
- `mean_uncached_tokens`: what the requests this policy placed had left to compute, on average
  (exponential mean, weight `EMA_WEIGHT` per request; before the first, this request's prompt length). One
  request ahead in a node's queue is thus worth one typical request's prefill;
- `load_weight` (default 1.0, `--prefix-load-weight`): 0 ignores load, larger values spread requests more.

It picks the lowest cost; candidates within `TIE_TOKENS` of it take turns (round robin), so an idle
cluster with nothing cached spreads requests as round robin does. A prompt the router cannot tokenize (no
tokenizer, a request shape router.tokenize does not reproduce) is placed the same way with nothing
cached. Every placement is counted (router.prefix_metrics).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from core.errors import ConfigError
from router import block_hash
from router.policies import PolicyContext, RoutingPolicy, RoutingRequest, register

if TYPE_CHECKING:
    from router.node_load import LoadSource
    from router.prefix_routing import PrefixRouting
    from router.registry import Node

EMA_WEIGHT = 0.1
TIE_TOKENS = 1e-6


class PrefixAware(RoutingPolicy):
    name = "prefix_aware"

    def __init__(self, role: str, prefix: PrefixRouting, load: LoadSource, load_weight: float = 1.0) -> None:
        if load_weight < 0:
            raise ValueError("load_weight must be >= 0")
        self.role, self.prefix, self.load, self.load_weight = role, prefix, load, load_weight
        self.mean_uncached_tokens: float | None = None
        self._turn = itertools.count()

    @classmethod
    def build(cls, context: PolicyContext) -> "PrefixAware":
        if context.prefix is None or context.load is None:
            raise ConfigError("prefix_aware needs the router's prefix index and a load source")
        return cls(context.role, context.prefix, context.load, context.prefix.settings.load_weight)

    def pick(self, candidates: list[Node], request: RoutingRequest) -> Node:
        ids, outcome = self._token_ids(request)
        prompt_tokens = len(ids) if ids is not None else 0
        cached = {n.url: self.cached_tokens(n, ids, request) for n in candidates}
        unit = self.mean_uncached_tokens if self.mean_uncached_tokens is not None else float(prompt_tokens)
        costs = [(prompt_tokens - cached[n.url]) + self.load_weight * self.load.load(n) * unit for n in candidates]
        best = min(costs)
        tied = [n for n, c in zip(candidates, costs) if c - best <= TIE_TOKENS]
        chosen = tied[next(self._turn) % len(tied)]
        self._account(chosen, candidates, ids, cached, outcome)
        return chosen

    def _token_ids(self, request: RoutingRequest) -> tuple[list[int] | None, str | None]:
        """The prompt's token ids (computed once per request) and, when there are none, why."""
        if "token_ids" not in request.memo:
            request.memo["token_ids"] = self.prefix.token_ids(request.endpoint, request.body)
        ids, why = request.memo["token_ids"]
        return ids, why

    def cached_tokens(self, node: Node, ids: list[int] | None, request: RoutingRequest) -> int:
        """Tokens of the prompt's longest prefix in `node`'s cache (0 without ids or events)."""
        size = self.prefix.index.block_size(node.url)
        if ids is None or not size:
            return 0
        key = ("block_hashes", size)
        if key not in request.memo:
            request.memo[key] = block_hash.block_hashes(ids, size, _cache_salt(request.body))
        return self.prefix.index.matched_blocks(node.url, request.memo[key]) * size

    def _account(self, chosen: Node, candidates: list[Node], ids: list[int] | None, cached: dict[str, int],
                 why_none: str | None) -> None:
        if ids is None:
            outcome = why_none or "no_tokens"
        elif not any(self.prefix.index.block_size(n.url) for n in candidates):
            outcome = "no_index"
        elif max(cached.values()) == 0:
            outcome = "miss"
        else:
            outcome = "hit" if cached[chosen.url] == max(cached.values()) else "load"
        metrics = self.prefix.metrics
        metrics.routes.labels(self.role, chosen.url, outcome).inc()
        if ids is not None:
            metrics.prompt_tokens.labels(self.role, chosen.url).inc(len(ids))
            metrics.cached_tokens.labels(self.role, chosen.url).inc(cached[chosen.url])
            uncached = len(ids) - cached[chosen.url]
            mean = self.mean_uncached_tokens
            self.mean_uncached_tokens = uncached if mean is None else mean + EMA_WEIGHT * (uncached - mean)


def _cache_salt(body: dict[str, Any]) -> str | None:
    salt = body.get("cache_salt")
    return salt if isinstance(salt, str) and salt else None


register(PrefixAware)
