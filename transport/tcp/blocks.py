"""Where the KV bytes of a block live: the seam between the TCP transport and the KV cache.

A `BlockStore` hands out, for a list of block ids, the memory to send from or receive into, in wire order:
layer by layer, and within a layer block by block. `RegionBlockStore` points straight into the KV cache
(one memoryview per layer and block, no copy). `transport.tcp.kv_tensors` builds stores from vLLM's KV
tensors, including a staging variant for layouts whose blocks are not contiguous and for GPU memory.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol


class BlockStore(Protocol):
    """The KV cache as the transport sees it."""

    layout_id: int  # CRC-32 of the per-block layout; a pull between different layouts is refused
    block_nbytes: int  # bytes of one block, all layers together
    num_blocks: int
    kv_dtype: str | None  # the elements' dtype (torch's name, "float32"), None for untyped bytes
    row_elements: int | None  # elements per row (one token's K or V in one head): what int8 scales over

    def read_views(self, block_ids: Sequence[int]) -> list[memoryview]:
        """The bytes of these blocks, in wire order, valid until the caller drops them."""
        ...

    def write_views(self, block_ids: Sequence[int]) -> tuple[list[memoryview], Callable[[], None]]:
        """Memory to receive these blocks into, in wire order, and the function that commits it once full."""
        ...


def layout_id_of(description: str) -> int:
    """The layout id of a textual layout description (layer shapes without the block count, dtype)."""
    return zlib.crc32(description.encode())


def check_block_ids(block_ids: Sequence[int], num_blocks: int) -> None:
    bad = [b for b in block_ids if not 0 <= b < num_blocks]
    if bad:
        raise ValueError(f"block ids {bad[:8]} outside 0..{num_blocks - 1}")


@dataclass(frozen=True)
class LayerRegion:
    """One layer's blocks inside a flat, writable byte buffer: block b is at `b * block_stride_nbytes`."""

    buffer: memoryview
    block_stride_nbytes: int
    block_nbytes: int

    def __post_init__(self) -> None:
        if self.buffer.readonly or self.buffer.ndim != 1 or self.buffer.itemsize != 1:
            raise ValueError("a layer region needs a flat, writable byte memoryview")
        if self.block_nbytes > self.block_stride_nbytes:
            raise ValueError("blocks overlap: block_nbytes > block_stride_nbytes")

    @property
    def num_blocks(self) -> int:
        return (len(self.buffer) - self.block_nbytes) // self.block_stride_nbytes + 1

    def block(self, block_id: int) -> memoryview:
        start = block_id * self.block_stride_nbytes
        return self.buffer[start:start + self.block_nbytes]

    def blocks(self, block_ids: Sequence[int]) -> list[memoryview]:
        """The blocks in order, runs of adjacent blocks as one view (fewer, larger system calls)."""
        if self.block_stride_nbytes != self.block_nbytes:
            return [self.block(b) for b in block_ids]
        views, start = [], 0
        for end in range(1, len(block_ids) + 1):
            if end == len(block_ids) or block_ids[end] != block_ids[end - 1] + 1:
                first = block_ids[start] * self.block_nbytes
                views.append(self.buffer[first:first + (end - start) * self.block_nbytes])
                start = end
        return views


class RegionBlockStore:
    """Blocks sent from and received into the KV memory itself (zero copy)."""

    def __init__(self, regions: Sequence[LayerRegion], layout_id: int, kv_dtype: str | None = None,
                 row_elements: int | None = None) -> None:
        if not regions:
            raise ValueError("no KV layers")
        self.regions = list(regions)
        self.layout_id = layout_id
        self.kv_dtype, self.row_elements = kv_dtype, row_elements
        self.block_nbytes = sum(r.block_nbytes for r in self.regions)
        self.num_blocks = min(r.num_blocks for r in self.regions)

    def read_views(self, block_ids: Sequence[int]) -> list[memoryview]:
        check_block_ids(block_ids, self.num_blocks)
        return [view for region in self.regions for view in region.blocks(block_ids)]

    def write_views(self, block_ids: Sequence[int]) -> tuple[list[memoryview], Callable[[], None]]:
        return self.read_views(block_ids), _nothing

    @classmethod
    def from_arrays(cls, arrays: Sequence[object], layout_id: int | None = None, kv_dtype: str | None = None,
                    row_elements: int | None = None) -> RegionBlockStore:
        """From C-contiguous arrays (numpy, or anything with the buffer protocol) whose first axis is the block;
        `kv_dtype` and `row_elements` say what the bytes are, for wire dtypes other than native."""
        regions = []
        for array in arrays:
            view = memoryview(array)  # type: ignore[arg-type]
            num_blocks = view.shape[0] if view.ndim else 0
            flat = view.cast("B")
            block = len(flat) // num_blocks
            regions.append(LayerRegion(flat, block, block))
        if layout_id is None:
            layout_id = layout_id_of(";".join(f"{r.block_nbytes}" for r in regions))
        return cls(regions, layout_id, kv_dtype, row_elements)


def _nothing() -> None:
    return None
