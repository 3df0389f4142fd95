"""One node's KV cache event stream, kept in order into the prefix index (pyzmq, imported only here).

`NodeEventStream.run()` subscribes (SUB) to the node's publisher, then asks its replay socket (a DEALER:
one request, many replies; a REQ socket would refuse the second reply) for every buffered batch from
sequence 0, so a router that starts after the node still learns what it holds; then it applies live
batches. `Sequencer` decides what each live sequence number means (the issue-16 research, §1.5):

- the next one: apply it;
- one a replay applied already (the SUB socket buffered it meanwhile): a duplicate, skipped;
- a later one (batches were lost: ZMQ's high-water mark drops silently): replay from the first missing
  one; if the replay cannot supply it (the node's buffer rolled over), the node's index is emptied
  (`events_lost`) and rebuilt from what comes;
- one not above the previous live one: the node restarted (vLLM numbers from 0 in each process and sends
  no `AllBlocksCleared` on start): empty its index (`sequence_reset`) and replay the new process's batches.

Nothing here unpickles: payloads are msgpack (router.kv_event_wire).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Callable

import zmq
import zmq.asyncio

from router import block_hash
from router.kv_event_wire import BlockStored, END_SEQ, WireError, decode_batch, seq_frame, seq_of
from router.prefix_index import PrefixIndex
from router.prefix_metrics import PrefixMetrics

log = logging.getLogger(__name__)
REPLAY_TIMEOUT_S = 5.0  # per reply frame; a replay that stalls longer is treated as unable to fill the gap


@dataclass(frozen=True)
class EventSource:
    """Where a node publishes (`tcp://HOST:PORT`), its replay socket (None: no replay) and its topic."""

    endpoint: str
    replay_endpoint: str | None = None
    topic: str = ""


class Sequencer:
    """What a live batch's sequence number means, given what was applied (see the module docstring). A SUB
    socket hands one publisher's batches over in order, so a number not above the previous live one means
    a new publisher process; one not above the last applied (but above the previous live one) came by
    replay already."""

    def __init__(self) -> None:
        self.last_seq: int | None = None  # the last batch applied, live or replayed
        self._last_live: int | None = None

    def replayed(self, last_seq: int | None) -> None:
        """A replay applied batches up to `last_seq` (None: it returned none)."""
        if last_seq is not None:
            self.last_seq = last_seq

    def classify(self, seq: int) -> str:
        """'apply', 'duplicate', 'gap' or 'reset' for a live batch numbered `seq`."""
        if self._last_live is not None and seq <= self._last_live:
            return "reset"
        if self.last_seq is None or seq == self.last_seq + 1:
            return "apply"
        return "duplicate" if seq <= self.last_seq else "gap"

    def seen_live(self, seq: int) -> None:
        self._last_live = seq

    def applied(self, seq: int) -> None:
        self.last_seq = seq


def new_context() -> zmq.asyncio.Context:
    return zmq.asyncio.Context()


class NodeEventStream:
    """Keeps `index`'s entry for `node` (its URL) in step with the node's events, until cancelled."""

    def __init__(self, node: str, source: EventSource, index: PrefixIndex, metrics: PrefixMetrics,
                 context: zmq.asyncio.Context, on_batch: Callable[[str], None] | None = None) -> None:
        self.node, self.source, self.index, self.metrics = node, source, index, metrics
        self.context, self.on_batch = context, on_batch  # on_batch(node): tests wait on it
        self.sequencer = Sequencer()
        self._hash_checked = False

    async def run(self) -> None:
        sub = self.context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        try:
            sub.connect(self.source.endpoint)
            sub.setsockopt(zmq.SUBSCRIBE, self.source.topic.encode())
            log.info("KV events of %s: subscribed to %s (replay: %s)", self.node, self.source.endpoint,
                     self.source.replay_endpoint or "none")
            await self._catch_up(0)
            while True:
                frames = await sub.recv_multipart()
                if len(frames) != 3:
                    log.warning("KV events of %s: a message of %d frames, not 3; skipped", self.node, len(frames))
                    continue
                await self._live(seq_of(frames[1]), frames[2])
        finally:
            sub.close()

    async def _live(self, seq: int, payload: bytes) -> None:
        action = self.sequencer.classify(seq)
        if action == "duplicate":
            self.sequencer.seen_live(seq)
            return
        if action == "reset":
            log.warning("KV events of %s: sequence %d after %s: the node restarted", self.node, seq,
                        self.sequencer.last_seq)
            self.index.clear(self.node, "sequence_reset")
            self.sequencer = Sequencer()
            await self._catch_up(0)
        elif action == "gap":
            missing = (self.sequencer.last_seq or 0) + 1
            log.warning("KV events of %s: batches %d..%d lost; asking for a replay", self.node, missing, seq - 1)
            await self._catch_up(missing)
        if self.sequencer.last_seq is None or seq > self.sequencer.last_seq:
            self._apply(seq, payload)
        self.sequencer.seen_live(seq)

    async def _catch_up(self, start_seq: int) -> None:
        """Apply the node's buffered batches from `start_seq`; empty its index first when they cannot
        start there (a gap the buffer no longer covers)."""
        batches = await self._replay(start_seq)
        if start_seq > 0 and (not batches or batches[0][0] != start_seq):
            self.index.clear(self.node, "events_lost")
        elif start_seq == 0 and batches and batches[0][0] > 0:
            log.info("KV events of %s: its replay buffer starts at %d; the index holds only what later "
                     "batches say (a hint: it fills as the node stores blocks)", self.node, batches[0][0])
        for seq, payload in batches:
            self._apply(seq, payload)
        self.sequencer.replayed(batches[-1][0] if batches else None)

    async def _replay(self, start_seq: int) -> list[tuple[int, bytes]]:
        """The batches the node's replay socket holds from `start_seq` ([] without one, or on a timeout)."""
        if self.source.replay_endpoint is None:
            return []
        dealer = self.context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        batches: list[tuple[int, bytes]] = []
        try:
            dealer.connect(self.source.replay_endpoint)
            await dealer.send_multipart([b"", seq_frame(start_seq)])
            while True:
                frames = await asyncio.wait_for(dealer.recv_multipart(), REPLAY_TIMEOUT_S)
                if len(frames) != 4 or seq_of(frames[2]) == END_SEQ:
                    return batches
                batches.append((seq_of(frames[2]), frames[3]))
        except TimeoutError:
            log.warning("KV events of %s: replay from %d timed out after %d batches", self.node, start_seq,
                        len(batches))
            return []
        finally:
            dealer.close()

    def _apply(self, seq: int, payload: bytes) -> None:
        self.sequencer.applied(seq)
        try:
            batch = decode_batch(payload)
        except WireError as exc:
            log.warning("KV events of %s: batch %d skipped: %s", self.node, seq, exc)
            return
        for event in batch.events:
            self.metrics.events.labels(self.node, type(event).__name__).inc()
            if isinstance(event, BlockStored) and not self._hash_checked:
                self._check_hash(event)
        if batch.skipped:
            self.metrics.events.labels(self.node, "unknown").inc(batch.skipped)
        self.index.apply(self.node, batch.events)
        self.metrics.blocks.labels(self.node).set(self.index.num_blocks(self.node))
        if self.on_batch is not None:
            self.on_batch(self.node)

    def _check_hash(self, event: BlockStored) -> None:
        """Once per stream: does the node hash a prompt's first block as the router does?"""
        plain = not event.lora_name and not (event.extra_keys and event.extra_keys[0])
        if event.parent_block_hash is not None or not plain or event.block_size <= 0 \
                or len(event.token_ids) < event.block_size:
            return
        self._hash_checked = True
        ours = block_hash.first_block_hash(event.token_ids, event.block_size)
        if ours != event.block_hashes[0]:
            self.metrics.hash_mismatch.labels(self.node).inc()
            log.error("KV events of %s: its block hashes differ from the router's, so prefix routing cannot "
                      "find its blocks: start it with --prefix-caching-hash-algo sha256_cbor and without "
                      "PYTHONHASHSEED (disagg nodes with --kv-events do)", self.node)
