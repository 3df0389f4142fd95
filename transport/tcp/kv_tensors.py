"""Worker side: vLLM's KV cache tensors as a `BlockStore` for the TCP transport.

vLLM hands the connector one tensor per attention layer whose first axis is the block (on CPU:
`[num_blocks, num_kv_heads, block_size, 2 * head_size]`, 128-token blocks). Where each block of a layer is one
contiguous run of host memory, blocks are sent from and received into the tensors themselves. Otherwise
(another layout, or KV on a GPU) they go through one staging buffer per transfer, pinned for GPUs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence

import torch

from transport.tcp.blocks import BlockStore, LayerRegion, RegionBlockStore, check_block_ids, layout_id_of

logger = logging.getLogger(__name__)


def ordered_layers(kv_caches: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """Layers in the same order on every node (natural order of names); shared KV tensors once."""
    def natural(name: str) -> list[object]:
        return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]

    seen: set[tuple[int, tuple[int, ...]]] = set()
    layers = []
    for name in sorted(kv_caches, key=natural):
        tensor = kv_caches[name]
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if key not in seen:
            seen.add(key)
            layers.append((name, tensor))
    return layers


def build_block_store(kv_caches: dict[str, torch.Tensor], head_size: int | None = None) -> BlockStore:
    """The KV tensors as a block store. `head_size` (from vLLM's KV cache spec) is the row the wire codec
    converts (`transport.tcp.codec`); without it, or when a block is not whole rows, only native is sent."""
    layers = ordered_layers(kv_caches)
    if not layers:
        raise ValueError("no KV cache tensors to transfer")
    tensors = [t for _, t in layers]
    num_blocks = tensors[0].shape[0]
    if any(t.shape[0] != num_blocks for t in tensors):
        raise NotImplementedError("KV layers with different block counts (hybrid models) are not supported")
    description = ";".join(f"{name}:{tuple(t.shape[1:])}:{t.dtype}" for name, t in layers)
    layout_id = layout_id_of(description)
    direct = all(t.device.type == "cpu" and t[0].is_contiguous() for t in tensors)
    kv_dtype = str(tensors[0].dtype).removeprefix("torch.")
    rows = head_size if head_size and all(t[0].numel() % head_size == 0 for t in tensors) else None
    store: BlockStore = (RegionBlockStore([_region(t) for t in tensors], layout_id, kv_dtype, rows) if direct
                         else StagingBlockStore(tensors, layout_id, rows))
    logger.info("TCP KV store: %d layers x %d blocks, %d bytes per block, layer shape %s %s, layout %#010x, %s, "
                "rows of %s elements", len(tensors), num_blocks, store.block_nbytes, tuple(tensors[0].shape),
                tensors[0].dtype, layout_id, "in place" if direct else "staged", rows)
    return store


def _region(tensor: torch.Tensor) -> LayerRegion:
    """A flat byte view of one layer covering all its blocks (block b at b * block stride)."""
    block_numel = tensor[0].numel()
    span_numel = (tensor.shape[0] - 1) * tensor.stride(0) + block_numel
    flat = torch.as_strided(tensor, (span_numel,), (1,))
    buffer = memoryview(flat.view(torch.uint8).numpy())
    elem = tensor.element_size()
    return LayerRegion(buffer, tensor.stride(0) * elem, block_numel * elem)


class StagingBlockStore:
    """Blocks gathered into / scattered from one host buffer per transfer.

    Used where blocks are not contiguous host memory. For KV in GPU memory the buffer is pinned
    (the only CUDA-specific step, taken only when the tensors are on a GPU; not tested on CPU-only CI).
    """

    def __init__(self, tensors: Sequence[torch.Tensor], layout_id: int, row_elements: int | None = None) -> None:
        self.tensors = list(tensors)
        self.layout_id = layout_id
        self.kv_dtype: str | None = str(self.tensors[0].dtype).removeprefix("torch.")
        self.row_elements = row_elements
        self.num_blocks = int(self.tensors[0].shape[0])
        self.block_nbytes = sum(t[0].numel() * t.element_size() for t in self.tensors)
        self._pin_memory = self.tensors[0].is_cuda

    def read_views(self, block_ids: Sequence[int]) -> list[memoryview]:
        staging, slots = self._staging(block_ids)
        for tensor, block_id, slot in slots:
            slot.copy_(tensor[block_id])  # device -> pinned host: synchronous (non_blocking=False)
        return [memoryview(staging.numpy())]

    def write_views(self, block_ids: Sequence[int]) -> tuple[list[memoryview], Callable[[], None]]:
        staging, slots = self._staging(block_ids)

        def commit() -> None:
            for tensor, block_id, slot in slots:
                tensor[block_id].copy_(slot)
            if self._pin_memory:  # CUDA only: the blocks must be in place before the scheduler uses them
                torch.cuda.current_stream(self.tensors[0].device).synchronize()

        return [memoryview(staging.numpy())], commit

    def _staging(self, block_ids: Sequence[int]) -> tuple[torch.Tensor, list[tuple[torch.Tensor, int, torch.Tensor]]]:
        check_block_ids(block_ids, self.num_blocks)
        staging = torch.empty(len(block_ids) * self.block_nbytes, dtype=torch.uint8, pin_memory=self._pin_memory)
        slots, offset = [], 0
        for tensor in self.tensors:
            nbytes = tensor[0].numel() * tensor.element_size()
            for block_id in block_ids:
                slot = staging[offset:offset + nbytes].view(tensor.dtype).view(tensor[0].shape)
                slots.append((tensor, block_id, slot))
                offset += nbytes
        return staging, slots
