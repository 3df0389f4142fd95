"""The router's block hashes (router.block_hash) equal vLLM's own, so the router finds the blocks a node's KV
events announce: chained sha256 over canonical CBOR, the fixed seed, cache_salt in the first block, the
64-bit event form."""

from __future__ import annotations

import random

import pytest

from router import block_hash

pytestmark = pytest.mark.timeout(300)

TOKEN_LISTS = [
    [1, 2, 3] * 50,  # small ids, repeated blocks (the chain keeps equal blocks apart)
    list(range(23, 23 + 300)),  # ids around the CBOR head boundaries 23/24, 255/256
    [random.Random(0).randrange(0, 49152) for _ in range(700)],  # a real vocabulary's range
    [random.Random(1).randrange(0, 2**31) for _ in range(260)],  # 4-byte ids
    [0] * 256,
    [65535, 65536, 2**32 - 1, 2**32] * 64,  # 2-, 4- and 8-byte heads
]


def test_none_hash_is_vllms_fixed_seed():
    assert block_hash.none_hash().hex().startswith("9bd96a485ad84efd")  # the research's measured value


def test_only_full_blocks_are_hashed_and_the_chain_depends_on_every_earlier_block():
    ids = list(range(300))
    hashes = block_hash.block_hashes(ids, 128)
    assert len(hashes) == 2 and all(0 <= h < 2**64 for h in hashes)
    assert block_hash.block_hashes(ids[:255], 128) == hashes[:1]
    changed = block_hash.block_hashes([7] + ids[1:], 128)
    assert changed[0] != hashes[0] and changed[1] != hashes[1]  # the second block's tokens are equal
    assert block_hash.first_block_hash(ids, 128) == hashes[0]
    assert block_hash.first_block_hash(ids[:100], 128) is None


@pytest.mark.parametrize("block_size", [16, 128])
def test_equal_to_vllms_hash_block_tokens(block_size):
    pytest.importorskip("vllm")
    from vllm.utils.hashing import sha256_cbor
    from vllm.v1.core import kv_cache_utils as k

    k.init_none_hash(sha256_cbor)
    for ids in TOKEN_LISTS:
        for salt in (None, "tenant-a"):
            theirs, parent = [], None
            for start in range(0, len(ids) - block_size + 1, block_size):
                extra = (("cache_salt", salt),) if salt and start == 0 else None
                parent = k.hash_block_tokens(sha256_cbor, parent, ids[start:start + block_size], extra)
                theirs.append(k.maybe_convert_block_hash(parent))
            assert block_hash.block_hashes(ids, block_size, cache_salt=salt) == theirs


def test_equal_to_a_vllm_requests_own_block_hashes():
    pytest.importorskip("vllm")
    from vllm import SamplingParams
    from vllm.utils.hashing import sha256_cbor
    from vllm.v1.core import kv_cache_utils as k
    from vllm.v1.request import Request

    k.init_none_hash(sha256_cbor)
    ids = TOKEN_LISTS[2]
    request = Request(request_id="r", prompt_token_ids=ids, sampling_params=SamplingParams(max_tokens=1),
                      pooling_params=None, block_hasher=k.get_request_block_hasher(128, sha256_cbor))
    assert [k.maybe_convert_block_hash(h) for h in request.block_hashes] == block_hash.block_hashes(ids, 128)
    assert list(request.block_hashes) == block_hash.block_digests(ids, 128)
