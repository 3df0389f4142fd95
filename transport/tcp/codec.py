"""Converting KV rows to their wire dtype and back (`transport.tcp.wire_dtype`), vectorized per frame.

A *row* is one token's K or V in one KV head: `head_size` contiguous elements. vLLM's CPU KV tensor is
`[num_blocks, num_kv_heads, block_size, 2 * head_size]`, but its attention kernels read each (block, head)
as `[2 * block_size, head_size]`: K of the block's tokens, then V (vLLM's `cpu_attn.py` views it so). The
GPU layouts keep `head_size` innermost too. So a block of any of them is a run of whole rows, and a row is
the group "one token, one head" (for K, and separately for V) whatever the nominal shape.

Formulas and error bounds (x a KV element, x̂ what the decode side restores, u = 2^-24 float32's unit
roundoff):

- `bf16`: x̂ = x rounded to nearest-even bf16 (8 significant bits): |x̂ − x| ≤ 2^-8·|x| for every finite x
  (bf16 has float32's exponent range, so nothing overflows or goes subnormal that float32 would not);
  NaN and ±inf pass unchanged.
- `fp16`: x̂ = x rounded to nearest-even fp16 (11 significant bits): |x̂ − x| ≤ 2^-11·|x| + 2^-25 (the
  second term: fp16's subnormal spacing 2^-24, halved) for |x| ≤ 65504; larger values become ±inf: prefer
  bf16 for float32 caches whose values may be large.
- `int8`, symmetric, one scale per row: m = max|x| over the row, s = m / 127, q = rint(x · 127/m) in
  [−127, 127], sent as q (1 byte each) and s (float32); x̂ = q·s. Rounding to nearest gives |q − x/s| ≤ 1/2,
  so |x̂ − x| ≤ s/2 in exact arithmetic; the four float32 roundings (127/m, x·(127/m), m/127, q·s) add
  at most 4u·m (|q| ≤ 127.5·(1 + 2u)), so |x̂ − x| ≤ s/2 + 4u·m = s/2·(1 + 1016u). A row of zeros (m = 0)
  has s = 0 and restores to exact zeros; a row holding a NaN or ±inf has no finite scale: it is sent with
  s = NaN and restores to all NaN (the other rows are unaffected). Restoring into a bf16/fp16 cache rounds
  x̂ once more (the bound above plus that dtype's relative rounding).

Layout of an int8 frame of n rows: n float32 scales (native byte order, as the KV itself), then n × head_size
int8 values. A frame always holds whole rows; the receiver derives n from the payload's size.

Speed (this repository's CPU box, one core, float32 rows of 64, 16 MiB): quantizing in numpy ran at
0.49 GB/s of KV, in torch 0.74 GB/s, and as one fused numba kernel (below) 2.7 GB/s, so numba quantizes and
dequantizes. bf16 is a numba kernel too (round to nearest even on the bits; numpy has no bf16, and torch's
casts, fast alone, slowed to 0.04 GB/s in a process sharing two busy cores with vLLM: its OpenMP threads
contend); numba has no float16, so fp16 is numpy's cast (about 1 GB/s). numba is imported here only (it
comes with vLLM; torch is not needed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numba
import numpy as np

from transport.tcp.wire_dtype import KV_ELEMENT_NBYTES, SCALE_NBYTES, WireDtype, effective

logger = logging.getLogger(__name__)

_INT8_MAX = np.float32(127.0)


@numba.njit(cache=True, nogil=True)
def _float32_to_bf16(bits: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover (jit)
    """float32 bit patterns [n] uint32 -> bf16 bit patterns [n] uint16, rounded to nearest even; NaN stays NaN."""
    for i in range(bits.shape[0]):
        b = bits[i]
        if (b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):  # NaN: keep it quiet, never round it to inf
            out[i] = np.uint16((b >> np.uint32(16)) | np.uint32(0x40))
        else:
            out[i] = np.uint16((b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))


@numba.njit(cache=True, nogil=True)
def _bf16_to_float32(bits: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover (jit)
    """bf16 bit patterns [n] uint16 -> float32 bit patterns [n] uint32 (exact)."""
    for i in range(bits.shape[0]):
        out[i] = np.uint32(bits[i]) << np.uint32(16)


@numba.njit(cache=True, nogil=True)
def _quantize_rows(x: np.ndarray, scales: np.ndarray, values: np.ndarray) -> None:  # pragma: no cover (jit)
    """x [n, g] float32 -> scales [n] float32, values [n, g] int8 (see the module's formulas)."""
    for i in range(x.shape[0]):
        peak = np.float32(0.0)
        finite = True
        for j in range(x.shape[1]):
            a = abs(x[i, j])
            if not np.isfinite(a):
                finite = False
            elif a > peak:
                peak = a
        if not finite:
            scales[i] = np.float32(np.nan)
            values[i, :] = 0
            continue
        scales[i] = peak / _INT8_MAX
        inverse = _INT8_MAX / peak if peak > 0 else np.float32(0.0)
        for j in range(x.shape[1]):
            values[i, j] = np.int8(np.rint(x[i, j] * inverse))


@numba.njit(cache=True, nogil=True)
def _dequantize_rows(values: np.ndarray, scales: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover (jit)
    """values [n, g] int8 and scales [n] float32 -> out [n, g] float32 (x̂ = q·s; NaN scale: all NaN)."""
    for i in range(values.shape[0]):
        scale = scales[i]
        for j in range(values.shape[1]):
            out[i, j] = np.float32(values[i, j]) * scale


class Codec:
    """One (wire dtype, KV dtype, row length) conversion. `wire` NATIVE is rejected: nothing to convert.

    `encode(pieces, out)` writes the wire bytes of the KV `pieces` (whole rows, in order) into `out`;
    `decode(payload, pieces)` restores one frame's wire bytes into the KV `pieces` it covers.
    """

    def __init__(self, wire: WireDtype, kv_dtype: str, row_elements: int) -> None:
        if effective(wire, kv_dtype) is WireDtype.NATIVE:
            raise ValueError(f"wire dtype {wire.label} does not apply to a {kv_dtype} KV cache")
        if row_elements <= 0:
            raise ValueError(f"row_elements must be > 0, not {row_elements}")
        self.wire, self.kv_dtype, self.row_elements = wire, kv_dtype, row_elements
        self.kv_row_nbytes = row_elements * KV_ELEMENT_NBYTES[kv_dtype]
        self.wire_row_nbytes = (row_elements + SCALE_NBYTES if wire is WireDtype.INT8
                                else row_elements * (wire.element_nbytes or 0))

    def wire_nbytes(self, kv_nbytes: int) -> int:
        return self._rows(kv_nbytes, self.kv_row_nbytes, "KV") * self.wire_row_nbytes

    def kv_nbytes(self, wire_nbytes: int) -> int:
        """KV bytes a frame of `wire_nbytes` restores; ValueError when it is not whole rows."""
        return self._rows(wire_nbytes, self.wire_row_nbytes, "wire") * self.kv_row_nbytes

    def encode(self, pieces: Sequence[memoryview], out: memoryview) -> int:
        """Write the wire form of `pieces` into the start of `out`; returns the bytes written."""
        total_rows = sum(self._rows(len(p), self.kv_row_nbytes, "KV") for p in pieces)
        nbytes = total_rows * self.wire_row_nbytes
        if self.wire is WireDtype.INT8:
            scales, values = self._int8_parts(out, total_rows)
            row = 0
            for piece in pieces:
                x = self._float32_rows(piece)
                _quantize_rows(x, scales[row:row + len(x)], values[row:row + len(x)])
                row += len(x)
            return nbytes
        offset = 0
        for piece in pieces:  # casts apply to float32 caches only (`wire_dtype.effective`)
            count = len(piece) // 4
            if self.wire is WireDtype.BF16:
                _float32_to_bf16(np.frombuffer(piece, np.uint32), np.frombuffer(out, np.uint16, count, offset))
            else:
                with np.errstate(over="ignore"):  # beyond fp16's range: ±inf, as documented above
                    np.copyto(np.frombuffer(out, np.float16, count, offset), np.frombuffer(piece, np.float32),
                              casting="same_kind")
            offset += count * 2
        return nbytes

    def decode(self, payload: memoryview, pieces: Sequence[memoryview]) -> None:
        """Restore `payload` (one frame: whole rows) into `pieces`, which must hold exactly its KV bytes."""
        kv_nbytes = self.kv_nbytes(len(payload))
        if sum(len(p) for p in pieces) != kv_nbytes:
            raise ValueError(f"a frame of {len(payload)} wire bytes restores {kv_nbytes} KV bytes, "
                             f"not {sum(len(p) for p in pieces)}")
        if self.wire is WireDtype.INT8:
            scales, values = self._int8_parts(payload, kv_nbytes // self.kv_row_nbytes)
            row = 0
            for piece in pieces:
                rows = len(piece) // self.kv_row_nbytes
                self._restore_int8(values[row:row + rows], scales[row:row + rows], piece)
                row += rows
            return
        offset = 0
        for piece in pieces:
            count = len(piece) // 4
            target = np.frombuffer(piece, np.uint32)
            if self.wire is WireDtype.BF16:
                _bf16_to_float32(np.frombuffer(payload, np.uint16, count, offset), target)
            else:
                np.copyto(target.view(np.float32), np.frombuffer(payload, np.float16, count, offset))
            offset += count * 2

    def _restore_int8(self, values: np.ndarray, scales: np.ndarray, piece: memoryview) -> None:
        if self.kv_dtype == "float32":
            _dequantize_rows(values, scales, np.frombuffer(piece, np.float32).reshape(-1, self.row_elements))
            return
        restored = np.empty(values.shape, np.float32)
        _dequantize_rows(values, scales, restored)
        if self.kv_dtype == "bfloat16":
            _float32_to_bf16(restored.reshape(-1).view(np.uint32), np.frombuffer(piece, np.uint16))
        else:
            np.copyto(np.frombuffer(piece, np.float16), restored.reshape(-1), casting="same_kind")

    def _float32_rows(self, piece: memoryview) -> np.ndarray:
        if self.kv_dtype == "float32":
            return np.frombuffer(piece, np.float32).reshape(-1, self.row_elements)
        if self.kv_dtype == "bfloat16":
            bits = np.empty(len(piece) // 2, np.uint32)
            _bf16_to_float32(np.frombuffer(piece, np.uint16), bits)
            return bits.view(np.float32).reshape(-1, self.row_elements)
        return np.frombuffer(piece, np.float16).astype(np.float32).reshape(-1, self.row_elements)

    def _int8_parts(self, buffer: memoryview, rows: int) -> tuple[np.ndarray, np.ndarray]:
        scales = np.frombuffer(buffer, np.float32, rows, 0)
        values = np.frombuffer(buffer, np.int8, rows * self.row_elements, rows * SCALE_NBYTES)
        return scales, values.reshape(rows, self.row_elements)

    def _rows(self, nbytes: int, row_nbytes: int, what: str) -> int:
        if nbytes % row_nbytes:
            raise ValueError(f"{nbytes} {what} bytes are not whole rows of {row_nbytes} bytes "
                             f"({self.wire.label} over {self.row_elements} {self.kv_dtype} elements)")
        return nbytes // row_nbytes


def warm_up(kv_dtype: str, row_elements: int) -> float:
    """Compile (or load from numba's cache) the kernels for this KV dtype; returns the seconds it took."""
    started_s = time.perf_counter()
    sample = memoryview(bytearray(2 * row_elements * KV_ELEMENT_NBYTES[kv_dtype]))
    for wire in (WireDtype.BF16, WireDtype.FP16, WireDtype.INT8):
        if effective(wire, kv_dtype) is WireDtype.NATIVE:
            continue
        codec = Codec(wire, kv_dtype, row_elements)
        out = memoryview(bytearray(codec.wire_nbytes(len(sample))))
        codec.encode([sample], out)
        codec.decode(out, [sample])
    return time.perf_counter() - started_s


def measure_throughput(kv_dtype: str, row_elements: int, sample_nbytes: int = 4 * 2**20,
                       repeats: int = 3) -> dict[WireDtype, tuple[float, float]]:
    """Bytes of KV per second each applicable wire dtype converts and restores on this host (best of
    `repeats` over `sample_nbytes` of KV-like rows: standard normal values): {wire: (encode, decode)}."""
    row_nbytes = row_elements * KV_ELEMENT_NBYTES[kv_dtype]
    rows = max(1, sample_nbytes // row_nbytes)
    values = np.random.default_rng(0).standard_normal(rows * row_elements, dtype=np.float32)
    if kv_dtype == "bfloat16":
        bits = np.empty(len(values), np.uint16)
        _float32_to_bf16(values.view(np.uint32), bits)
        sample = memoryview(bits).cast("B")
    else:
        sample = memoryview(values.astype(np.float16) if kv_dtype == "float16" else values).cast("B")
    found: dict[WireDtype, tuple[float, float]] = {}
    for wire in (WireDtype.BF16, WireDtype.FP16, WireDtype.INT8):
        if effective(wire, kv_dtype) is WireDtype.NATIVE:
            continue
        codec = Codec(wire, kv_dtype, row_elements)
        out = memoryview(bytearray(codec.wire_nbytes(len(sample))))
        encode_s = _best_of(repeats, lambda: codec.encode([sample], out))
        decode_s = _best_of(repeats, lambda: codec.decode(out, [sample]))
        found[wire] = (len(sample) / encode_s, len(sample) / decode_s)
    return found


def _best_of(repeats: int, step) -> float:
    best_s = float("inf")
    for _ in range(max(1, repeats)):
        started_s = time.perf_counter()
        step()
        best_s = min(best_s, time.perf_counter() - started_s)
    return max(best_s, 1e-9)
