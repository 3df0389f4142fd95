"""The prefix index applies a node's KV events (stored, removed, cleared), stays bounded, and scores the
longest cached prefix of a prompt's block chain; the wire decoder reads vLLM's real msgpack batches."""

from __future__ import annotations

import pickle

import msgspec
import pytest

from router.kv_event_wire import AllBlocksCleared, BlockRemoved, BlockStored, WireError, decode_batch
from router.prefix_index import PrefixIndex

pytestmark = pytest.mark.timeout(60)

# A batch as vLLM 0.32's ZmqEventPublisher encodes it (msgspec.msgpack.Encoder().encode(KVEventBatch(...)) with
# vLLM's own BlockStored / BlockRemoved / AllBlocksCleared; block size 4, tokens 1..8, sha256_cbor).
RECORDED = bytes.fromhex(
    "93cb41dac33d5e5000009389a474797065ab426c6f636b53746f726564ac626c6f636b5f68617368657392cf84b146b151d55111"
    "cfd43b57df56b58fb1b1706172656e745f626c6f636b5f68617368c0a9746f6b656e5f696473980102030405060708aa626c6f63"
    "6b5f73697a6504a76c6f72615f6964c0a66d656469756da3475055a96c6f72615f6e616d65c0a967726f75705f6964780084a474"
    "797065ac426c6f636b52656d6f766564ac626c6f636b5f68617368657391cfd43b57df56b58fb1a66d656469756da3475055a967"
    "726f75705f6964780081a474797065b0416c6c426c6f636b73436c656172656400")
H0, H1 = 9561501211280363793, 15292913576410714033


def stored(hashes, block_size=4, medium="GPU", parent=None):
    return BlockStored(block_hashes=list(hashes), parent_block_hash=parent, token_ids=[0] * (block_size * len(hashes)),
                       block_size=block_size, medium=medium)


def test_a_recorded_vllm_batch_decodes_to_its_events():
    batch = decode_batch(RECORDED)
    assert batch.ts == 1796011385.25 and batch.skipped == 0
    first, second, third = batch.events
    assert isinstance(first, BlockStored) and first.block_hashes == [H0, H1] and first.block_size == 4
    assert first.parent_block_hash is None and first.token_ids == list(range(1, 9)) and first.medium == "GPU"
    assert isinstance(second, BlockRemoved) and second.block_hashes == [H1]
    assert isinstance(third, AllBlocksCleared)
    from router import block_hash
    assert block_hash.block_hashes(list(range(1, 9)), 4) == [H0, H1]  # the router hashes as the node did


def test_a_batch_built_with_vllms_own_event_classes_decodes():
    pytest.importorskip("vllm")
    from vllm.distributed.kv_events import BlockStored as VStored, KVEventBatch

    event = VStored(block_hashes=[b"\x00" * 24 + (5).to_bytes(8, "big")], parent_block_hash=7, token_ids=[1, 2],
                    block_size=2, lora_id=None, medium="GPU", lora_name=None, extra_keys=[("tenant",)],
                    group_idx=0, session_id="s")
    batch = decode_batch(msgspec.msgpack.Encoder().encode(KVEventBatch(ts=1.0, events=[event], data_parallel_rank=0)))
    assert batch.events[0].block_hashes == [5] and batch.events[0].parent_block_hash == 7  # bytes -> low 64 bits


def test_unknown_event_types_are_skipped_and_non_batches_refused_without_unpickling():
    payload = msgspec.msgpack.encode([2.0, [{"type": "BlockMoved", "x": 1}, {"type": "AllBlocksCleared"}], 0])
    batch = decode_batch(payload)
    assert batch.skipped == 1 and isinstance(batch.events[0], AllBlocksCleared)
    for bad in (pickle.dumps({"events": []}), b"", b"\x93\x01"):
        with pytest.raises(WireError):
            decode_batch(bad)


def test_stored_removed_and_cleared_events_update_a_nodes_blocks():
    resets = []
    index = PrefixIndex(on_clear=lambda node, reason: resets.append((node, reason)))
    index.apply("a", [stored([1, 2, 3]), stored([9], medium="CPU")])  # another medium is not the node's cache
    assert index.num_blocks("a") == 3 and index.block_size("a") == 4 and index.num_blocks("b") == 0
    assert index.matched_blocks("a", [1, 2, 3, 4]) == 3 and index.matched_blocks("a", [1, 5, 3]) == 1
    index.apply("a", [BlockRemoved(block_hashes=[2], medium="GPU")])
    assert index.matched_blocks("a", [1, 2, 3]) == 1
    index.apply("a", [AllBlocksCleared(), stored([7])])
    assert index.matched_blocks("a", [1]) == 0 and index.matched_blocks("a", [7]) == 1
    assert resets == [("a", "all_blocks_cleared")]
    index.clear("a", "sequence_reset")
    assert index.num_blocks("a") == 0 and index.block_size("a") == 4 and resets[-1] == ("a", "sequence_reset")


def test_the_index_is_bounded_per_node_and_forgets_the_oldest_first():
    index = PrefixIndex(max_blocks_per_node=3)
    index.apply("a", [stored([1, 2, 3])])
    index.apply("a", [stored([1]), stored([4])])  # 1 stored again is the newest: 2 is now the oldest
    assert index.num_blocks("a") == 3
    assert [index.matched_blocks("a", [h]) for h in (1, 2, 3, 4)] == [1, 0, 1, 1]


def test_a_new_block_size_starts_the_nodes_index_again():
    index = PrefixIndex()
    index.apply("a", [stored([1, 2], block_size=16)])
    index.apply("a", [stored([3], block_size=128)])
    assert index.block_size("a") == 128 and index.matched_blocks("a", [1]) == 0 and index.num_blocks("a") == 1
