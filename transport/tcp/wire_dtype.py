"""What the KV looks like on the wire: the wire dtypes, their codes in a PULL frame, and their sizes.

`native` sends the KV cache's own bytes. `bf16` and `fp16` send every element cast to 2 bytes. `int8` sends,
per row (one token's K or V in one KV head: `head_size` elements), the elements quantized to int8 and one
float32 scale (`transport.tcp.codec` has the formulas and error bounds). Pure arithmetic: no torch.

A wire dtype only applies where it shrinks the bytes: asked of a cache whose elements are not wider than it
(a bf16 wire over a bf16 cache, int8 over an FP8 cache), the transfer is `native` (`effective`). Both sides
apply the same rule to the same cache layout (the PULL's layout id ties them), so they agree on the bytes.
"""

from __future__ import annotations

import enum

SCALE_NBYTES = 4  # int8: one float32 scale per row
# bytes per element of the KV cache dtypes a block store may report (torch's names, without "torch.")
KV_ELEMENT_NBYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2, "float8_e4m3fn": 1,
                                     "float8_e5m2": 1, "uint8": 1, "int8": 1}
CODEC_KV_DTYPES = ("float32", "bfloat16", "float16")  # what the codec converts from and restores into


class WireDtype(enum.IntEnum):
    """The code in a PULL frame's `wire dtype` field."""

    NATIVE = 0
    BF16 = 1
    FP16 = 2
    INT8 = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def element_nbytes(self) -> int | None:
        """Bytes per element on the wire (None: the cache's own)."""
        return {WireDtype.NATIVE: None, WireDtype.BF16: 2, WireDtype.FP16: 2, WireDtype.INT8: 1}[self]


WIRE_DTYPES = tuple(w.label for w in WireDtype)  # ("native", "bf16", "fp16", "int8")
AUTO = "auto"


def parse(name: str) -> WireDtype:
    """`"int8"` -> WireDtype.INT8; ValueError naming the known ones otherwise (`auto` is not a wire dtype:
    it is resolved to one by `transport.tcp.wire_choice` before a pull)."""
    try:
        return WireDtype[str(name).strip().upper()]
    except KeyError:
        raise ValueError(f"unknown KV wire dtype {name!r}; known: {', '.join(WIRE_DTYPES)}") from None


def effective(wire: WireDtype, kv_dtype: str | None) -> WireDtype:
    """What is really sent for `wire` from a cache of `kv_dtype` (torch's name, e.g. "float32"): `wire` when
    the codec handles that cache dtype and the wire element is narrower than the cache's, else NATIVE."""
    if wire is WireDtype.NATIVE or kv_dtype not in CODEC_KV_DTYPES:
        return WireDtype.NATIVE
    assert wire.element_nbytes is not None
    return wire if wire.element_nbytes < KV_ELEMENT_NBYTES[kv_dtype] else WireDtype.NATIVE


def wire_nbytes(kv_nbytes: int, wire: WireDtype, kv_dtype: str | None, row_elements: int | None) -> int:
    """Bytes on the wire for `kv_nbytes` of KV (whole rows) sent as `effective(wire, kv_dtype)`.

    Raises ValueError when the bytes are not whole rows of `row_elements` elements of `kv_dtype`.
    """
    wire = effective(wire, kv_dtype)
    if wire is WireDtype.NATIVE:
        return kv_nbytes
    assert kv_dtype is not None and wire.element_nbytes is not None
    element_nbytes = KV_ELEMENT_NBYTES[kv_dtype]
    if not row_elements or kv_nbytes % (row_elements * element_nbytes):
        raise ValueError(f"{kv_nbytes} bytes are not whole rows of {row_elements} {kv_dtype} elements")
    rows = kv_nbytes // (row_elements * element_nbytes)
    if wire is WireDtype.INT8:
        return rows * (row_elements + SCALE_NBYTES)
    return rows * row_elements * wire.element_nbytes


def ratio(wire: WireDtype, kv_dtype: str, row_elements: int) -> float:
    """Wire bytes over KV bytes, e.g. 0.2656 for int8 over float32 rows of 64 ((64 + 4) / 256)."""
    row_nbytes = row_elements * KV_ELEMENT_NBYTES[kv_dtype]
    return wire_nbytes(row_nbytes, wire, kv_dtype, row_elements) / row_nbytes
