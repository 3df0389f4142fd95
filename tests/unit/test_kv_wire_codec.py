"""KV wire dtypes: round trips on KV-shaped tensors stay within the bounds derived in `transport.tcp.codec`
(not tuned), special rows (zeros, NaN, inf) behave as documented, and the sizes are the stated ones."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numba")

from transport.tcp.codec import Codec  # noqa: E402
from transport.tcp.wire_dtype import WireDtype, effective, parse, ratio, wire_nbytes  # noqa: E402

pytestmark = pytest.mark.timeout(120)

U = 2.0**-24  # float32 unit roundoff
HEAD_SIZE = 64
# vLLM's CPU KV layer: [num_blocks, num_kv_heads, block_size, 2 * head_size]; rows of head_size elements
SHAPE = (3, 3, 128, 2 * HEAD_SIZE)


def _kv(seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # KV-like magnitudes: most rows O(1), some O(100) (outlier channels), some tiny
    x = torch.randn(SHAPE, generator=generator)
    x[0, 1] *= 100.0
    x[2, 0, :5] *= 1e-6
    return x.to(dtype)


def _round_trip(x: torch.Tensor, wire: WireDtype, pieces: int = 1) -> tuple[torch.Tensor, int]:
    """Encode x (split into `pieces` runs of whole blocks), decode into a fresh tensor of its dtype."""
    kv_dtype = str(x.dtype).removeprefix("torch.")
    codec = Codec(wire, kv_dtype, HEAD_SIZE)
    source = [memoryview(part.contiguous().view(torch.uint8).reshape(-1).numpy()) for part in x.chunk(pieces)]
    out = memoryview(bytearray(codec.wire_nbytes(sum(len(p) for p in source))))
    written = codec.encode(source, out)
    restored = torch.empty_like(x)
    targets = [memoryview(part.view(torch.uint8).reshape(-1).numpy()) for part in restored.chunk(pieces)]
    codec.decode(out, targets)
    return restored, written


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.float().reshape(-1, HEAD_SIZE)


@pytest.mark.parametrize("pieces", [1, 3])
def test_int8_error_is_within_half_a_scale_per_row(pieces):
    x = _kv(1)
    restored, written = _round_trip(x, WireDtype.INT8, pieces)
    rows, back = _rows(x), _rows(restored)
    peak = rows.abs().amax(dim=1, keepdim=True)
    scale = peak / 127
    bound = scale / 2 + 4 * U * peak  # derived in transport.tcp.codec's docstring
    assert bool(((back - rows).abs() <= bound).all())
    assert written == rows.shape[0] * (HEAD_SIZE + 4)
    assert float((back - rows).abs().max()) > 0  # it is lossy: the test would catch a codec that sent floats


def test_int8_rows_are_one_token_one_head_in_vllms_cpu_layout():
    """A row holds one token's K (or V) of one head: scaling one token of one head changes only its row."""
    x = _kv(2)
    k_and_v = x.view(SHAPE[0], SHAPE[1], 2 * SHAPE[2], HEAD_SIZE)  # vLLM cpu_attn's own view
    k_and_v[1, 2, 7] *= 1000.0  # token 7's K in head 2 of block 1
    restored, _ = _round_trip(x, WireDtype.INT8)
    error = (restored - x).view_as(k_and_v).abs()
    small = _round_trip(_kv(2), WireDtype.INT8)[0] - _kv(2)
    others = torch.ones_like(error, dtype=torch.bool)
    others[1, 2, 7] = False
    assert torch.equal(error[others], small.view_as(k_and_v).abs()[others])


def test_int8_special_rows_zero_nan_inf():
    x = _kv(3)
    rows = x.view(-1, HEAD_SIZE)
    rows[0] = 0.0
    rows[1, 5] = float("nan")
    rows[2, 9] = float("inf")
    rows[3, 0] = float("-inf")
    restored, _ = _round_trip(x, WireDtype.INT8)
    back = restored.view(-1, HEAD_SIZE)
    assert bool((back[0] == 0).all())
    for index in (1, 2, 3):
        assert bool(torch.isnan(back[index]).all()), index
    rest, rest_back = rows[4:], back[4:]
    bound = rest.abs().amax(dim=1, keepdim=True) / 254 + 4 * U * rest.abs().amax(dim=1, keepdim=True)
    assert bool(((rest_back - rest).abs() <= bound).all())


def test_bf16_relative_error_is_at_most_2_to_minus_8():
    x = _kv(4)
    x.view(-1)[:3] = torch.tensor([float("nan"), float("inf"), 0.0])
    restored, written = _round_trip(x, WireDtype.BF16)
    finite = torch.isfinite(x)
    assert bool(((restored - x).abs()[finite] <= 2.0**-8 * x.abs()[finite]).all())
    assert torch.isnan(restored.view(-1)[0]) and restored.view(-1)[1] == float("inf") and restored.view(-1)[2] == 0
    assert written == x.numel() * 2
    torch.testing.assert_close(restored, x.to(torch.bfloat16).float(), rtol=0, atol=0, equal_nan=True)  # as torch


def test_fp16_error_bound_and_overflow():
    x = _kv(5)
    x.view(-1)[0] = 1e6  # beyond fp16's 65504: documented to become inf
    restored, written = _round_trip(x, WireDtype.FP16)
    in_range = x.abs() <= 65504
    assert bool(((restored - x).abs()[in_range] <= 2.0**-11 * x.abs()[in_range] + 2.0**-25).all())
    assert restored.view(-1)[0] == float("inf")
    assert written == x.numel() * 2


@pytest.mark.parametrize("kv_dtype", [torch.bfloat16, torch.float16])
def test_int8_over_half_precision_caches(kv_dtype):
    x = _kv(6, kv_dtype)
    restored, written = _round_trip(x, WireDtype.INT8)
    rows, back = _rows(x), _rows(restored)
    peak = rows.abs().amax(dim=1, keepdim=True)
    rounding = 2.0**-8 if kv_dtype == torch.bfloat16 else 2.0**-11  # x̂ rounded once more into the cache
    bound = peak / 254 + 4 * U * peak + rounding * (rows.abs() + peak / 254)
    assert bool(((back - rows).abs() <= bound).all())
    assert written == rows.shape[0] * (HEAD_SIZE + 4)


def test_sizes_and_what_applies():
    assert parse("INT8") is WireDtype.INT8 and parse(" bf16") is WireDtype.BF16
    with pytest.raises(ValueError, match="known: native, bf16, fp16, int8"):
        parse("int4")
    assert ratio(WireDtype.INT8, "float32", 64) == pytest.approx(68 / 256)
    assert 1 / ratio(WireDtype.INT8, "float32", 64) >= 3.5
    assert ratio(WireDtype.BF16, "float32", 64) == 0.5
    assert effective(WireDtype.BF16, "bfloat16") is WireDtype.NATIVE  # nothing to shrink
    assert effective(WireDtype.INT8, "bfloat16") is WireDtype.INT8
    assert effective(WireDtype.INT8, "float8_e4m3fn") is WireDtype.NATIVE
    assert effective(WireDtype.FP16, None) is WireDtype.NATIVE  # a store that does not say its dtype
    assert wire_nbytes(46080 * 128, WireDtype.INT8, "float32", 64) == 46080 * 128 // 256 * 68
    with pytest.raises(ValueError, match="whole rows"):
        wire_nbytes(100, WireDtype.INT8, "float32", 64)
    with pytest.raises(ValueError, match="does not apply"):
        Codec(WireDtype.BF16, "bfloat16", 64)


def test_decode_refuses_a_frame_that_is_not_whole_rows():
    codec = Codec(WireDtype.INT8, "float32", HEAD_SIZE)
    with pytest.raises(ValueError, match="whole rows"):
        codec.decode(memoryview(bytearray(HEAD_SIZE + 3)), [memoryview(bytearray(HEAD_SIZE * 4))])
