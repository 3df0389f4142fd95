"""Which node holds which KV blocks: the router's prefix index, fed by the nodes' KV cache events.

Per node: the set of block hashes (vLLM's event form, 64-bit ints; router.block_hash) its prefix cache
holds, and the block size it hashes with. `apply` takes decoded events (router.kv_event_wire):
`BlockStored` adds hashes, `BlockRemoved` removes them, `AllBlocksCleared` empties the node; `clear`
empties it for a reason the event stream cannot say (the node restarted, events were lost). Only the
device tier counts (`medium` "GPU", which is vLLM's label on CPU hosts too, or none); blocks an offloading
connector reports on other media do not make a node cheaper to prefill on.

Bounded: at most `max_blocks_per_node` hashes per node; past that the oldest stored are forgotten (a
node's real cache evicts them first too, and an index that forgets only under-estimates). The index is a
hint: a wrong entry costs a cache miss, never a wrong answer.

`matched_tokens(node, request)` is the score: the tokens of the longest prefix of the request's blocks the
node holds (walking the chain from the first block to the first miss), times the block size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from router.config import PREFIX_MAX_BLOCKS_PER_NODE
from router.kv_event_wire import AllBlocksCleared, BlockRemoved, BlockStored, KvEvent

log = logging.getLogger(__name__)
DEVICE_MEDIA = (None, "GPU")


@dataclass
class NodeBlocks:
    """One node's cached blocks (insertion-ordered, so the oldest can be dropped) and its block size."""

    block_size: int | None = None
    hashes: dict[int, None] = field(default_factory=dict)
    stored_total: int = 0
    removed_total: int = 0


class PrefixIndex:
    """Block hashes per node (keyed by the node's URL, as the router's registry names nodes)."""

    def __init__(self, max_blocks_per_node: int = PREFIX_MAX_BLOCKS_PER_NODE,
                 on_clear: Callable[[str, str], None] | None = None) -> None:
        if max_blocks_per_node < 1:
            raise ValueError("max_blocks_per_node must be >= 1")
        self.max_blocks_per_node = max_blocks_per_node
        self._nodes: dict[str, NodeBlocks] = {}
        self._on_clear = on_clear  # (node, reason), e.g. to count resets

    def node(self, node: str) -> NodeBlocks:
        return self._nodes.setdefault(node, NodeBlocks())

    def apply(self, node: str, events: Iterable[KvEvent]) -> None:
        """Apply one batch of a node's events, in order."""
        blocks = self.node(node)
        for event in events:
            if isinstance(event, BlockStored):
                self._store(blocks, event)
            elif isinstance(event, BlockRemoved):
                if event.medium in DEVICE_MEDIA:
                    for block_hash in event.block_hashes:
                        if block_hash in blocks.hashes:
                            del blocks.hashes[block_hash]
                            blocks.removed_total += 1
            elif isinstance(event, AllBlocksCleared):
                self.clear(node, "all_blocks_cleared")

    def _store(self, blocks: NodeBlocks, event: BlockStored) -> None:
        if event.medium not in DEVICE_MEDIA:
            return
        if blocks.block_size != event.block_size:
            if blocks.hashes:
                log.warning("a node changed its block size from %s to %s tokens; its index starts again",
                            blocks.block_size, event.block_size)
                blocks.hashes.clear()
            blocks.block_size = event.block_size
        for block_hash in event.block_hashes:
            blocks.hashes.pop(block_hash, None)  # stored again: now the newest
            blocks.hashes[block_hash] = None
            blocks.stored_total += 1
        while len(blocks.hashes) > self.max_blocks_per_node:
            del blocks.hashes[next(iter(blocks.hashes))]

    def clear(self, node: str, reason: str) -> None:
        """Forget everything `node` held (its block size stays known)."""
        blocks = self.node(node)
        if blocks.hashes:
            log.info("prefix index: forgetting the %d blocks of %s (%s)", len(blocks.hashes), node, reason)
        blocks.hashes.clear()
        if self._on_clear is not None:
            self._on_clear(node, reason)

    def block_size(self, node: str) -> int | None:
        blocks = self._nodes.get(node)
        return blocks.block_size if blocks else None

    def num_blocks(self, node: str) -> int:
        blocks = self._nodes.get(node)
        return len(blocks.hashes) if blocks else 0

    def matched_blocks(self, node: str, chain: Sequence[int]) -> int:
        """How many of `chain` (a prompt's block hashes, first block first) the node holds as a prefix."""
        blocks = self._nodes.get(node)
        if blocks is None:
            return 0
        held = blocks.hashes
        for count, block_hash in enumerate(chain):
            if block_hash not in held:
                return count
        return len(chain)
