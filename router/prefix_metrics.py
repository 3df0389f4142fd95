"""The prefix-aware routing series, registered on the router's own Prometheus registry (router.metrics).

- `disagg_router_prefix_routes_total{role,node,outcome}`: placements by the prefix_aware policy.
  `outcome`: `hit` (the chosen node held part of the prompt), `miss` (no candidate held any),
  `load` (a candidate held part of it but load sent the request elsewhere), `no_tokens` (the prompt could
  not be tokenized: no tokenizer, or a shape the router does not render), `no_index` (no candidate has
  published KV events yet).
- `disagg_router_prefix_prompt_tokens_total{role,node}` and `disagg_router_prefix_cached_tokens_total
  {role,node}`: prompt tokens placed on a node and how many of them the index said it held (their ratio is
  the router's predicted prefix-cache hit rate; the node's `vllm:prefix_cache_hits` is the truth).
- `disagg_router_kv_events_total{node,type}`: events applied (`BlockStored`, `BlockRemoved`,
  `AllBlocksCleared`, `unknown` for skipped types).
- `disagg_router_kv_index_resets_total{node,reason}`: a node's index emptied: `all_blocks_cleared`,
  `sequence_reset` (its sequence numbers started again: a restart), `node_restarted` (new pid or event
  endpoint), `events_lost` (a gap replay could not fill), `stream_failed` (the subscription broke and
  starts again).
- `disagg_router_kv_index_blocks{node}`: blocks the index holds per node.
- `disagg_router_kv_events_hash_mismatch_total{node}`: a prompt's first block hashed differently by the node
  than by the router (the node lacks `--prefix-caching-hash-algo sha256_cbor`, or sets PYTHONHASHSEED):
  prefix routing cannot hit that node.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class PrefixMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.routes = Counter("disagg_router_prefix_routes", "Placements by the prefix_aware policy, by outcome",
                              ["role", "node", "outcome"], registry=registry)
        self.prompt_tokens = Counter("disagg_router_prefix_prompt_tokens", "Prompt tokens placed by the "
                                     "prefix_aware policy, per node", ["role", "node"], registry=registry)
        self.cached_tokens = Counter("disagg_router_prefix_cached_tokens", "Of those, the tokens the index "
                                     "said the node held (predicted prefix-cache hits)", ["role", "node"],
                                     registry=registry)
        self.events = Counter("disagg_router_kv_events", "KV cache events applied to the prefix index",
                              ["node", "type"], registry=registry)
        self.resets = Counter("disagg_router_kv_index_resets", "Times a node's prefix index was emptied, by reason",
                              ["node", "reason"], registry=registry)
        self.blocks = Gauge("disagg_router_kv_index_blocks", "Blocks the prefix index holds per node", ["node"],
                            registry=registry)
        self.hash_mismatch = Counter("disagg_router_kv_events_hash_mismatch", "BlockStored events whose first "
                                     "block the router hashes differently", ["node"], registry=registry)
