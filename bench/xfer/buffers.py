"""The bytes a transport benchmark moves: a KV-shaped host buffer with a checkable pattern.

The buffer is laid out as KV blocks, `layers` × `num_blocks` × `block_nbytes`, layer-major (as vLLM's
per-layer KV tensors), each block 64 KiB: one layer of a 16-token block of Llama-3.1-8B in fp16
(16 tokens × 2 × 8 KV heads × 128 × 2 B). The source fills it with a pattern any process can recompute
(8-byte word i holds i × an odd constant), so the sink checks what arrived without a second copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIB = 2**20
BLOCK_NBYTES = 64 * 1024
MAX_LAYERS = 16
_WORD_FACTOR = np.uint64(0x9E3779B97F4A7C15)
_FILL_CHUNK_WORDS = 2 * MIB  # 16 MiB at a time, so filling never needs a second full-size array
_FULL_CHECK_MAX_BYTES = 64 * MIB
_SAMPLE_WINDOWS = 64
_SAMPLE_WORDS = 512


@dataclass(frozen=True)
class KvLayout:
    """How `size_bytes` of KV are split into layers and blocks."""

    layers: int
    num_blocks: int  # per layer
    block_nbytes: int  # one block of one layer

    @property
    def size_bytes(self) -> int:
        return self.layers * self.num_blocks * self.block_nbytes

    def describe(self) -> str:
        return (f"{self.layers} layers × {self.num_blocks} blocks × {self.block_nbytes // 1024} KiB, "
                "layer-major, blocks in order")


def layout_for(size_bytes: int, block_nbytes: int = BLOCK_NBYTES, max_layers: int = MAX_LAYERS) -> KvLayout:
    """The KV layout of `size_bytes`: up to `max_layers` layers of whole `block_nbytes` blocks."""
    if size_bytes <= 0 or size_bytes % block_nbytes:
        raise ValueError(f"size {size_bytes} B is not a positive multiple of the {block_nbytes} B block")
    total_blocks = size_bytes // block_nbytes
    layers = max(d for d in range(1, min(max_layers, total_blocks) + 1) if total_blocks % d == 0)
    return KvLayout(layers, total_blocks // layers, block_nbytes)


def pattern_buffer(size_bytes: int) -> np.ndarray:
    """A new `size_bytes` uint8 buffer holding the pattern."""
    buffer = np.empty(size_bytes, dtype=np.uint8)
    words = buffer.view(np.uint64)
    for start in range(0, len(words), _FILL_CHUNK_WORDS):
        end = min(start + _FILL_CHUNK_WORDS, len(words))
        np.multiply(np.arange(start, end, dtype=np.uint64), _WORD_FACTOR, out=words[start:end])
    return buffer


def empty_buffer(size_bytes: int) -> np.ndarray:
    """A zeroed `size_bytes` buffer whose pages are already mapped (so the first transfer pays no faults)."""
    buffer = np.empty(size_bytes, dtype=np.uint8)
    buffer.fill(0)
    return buffer


def holds_pattern(buffer: np.ndarray) -> bool:
    """True when `buffer` holds the pattern: every word up to 64 MiB, evenly spaced windows above."""
    words = buffer.view(np.uint64)
    if buffer.nbytes <= _FULL_CHECK_MAX_BYTES:
        starts = range(0, len(words), _FILL_CHUNK_WORDS)
        span = _FILL_CHUNK_WORDS
    else:
        step = len(words) // _SAMPLE_WINDOWS
        starts = [*range(0, len(words) - _SAMPLE_WORDS, step), len(words) - _SAMPLE_WORDS]
        span = _SAMPLE_WORDS
    for start in starts:
        end = min(start + span, len(words))
        expected = np.arange(start, end, dtype=np.uint64) * _WORD_FACTOR
        if not np.array_equal(words[start:end], expected):
            return False
    return True


def layer_arrays(buffer: np.ndarray, layout: KvLayout) -> list[np.ndarray]:
    """One [num_blocks, block_nbytes] view per layer of `buffer`."""
    shaped = buffer.reshape(layout.layers, layout.num_blocks, layout.block_nbytes)
    return [shaped[layer] for layer in range(layout.layers)]


def block_descriptors(base_address: int, layout: KvLayout) -> np.ndarray:
    """(address, length, device id) of every block of every layer, in wire order: an N×3 uint64 array."""
    count = layout.layers * layout.num_blocks
    descriptors = np.zeros((count, 3), dtype=np.uint64)
    descriptors[:, 0] = base_address + np.arange(count, dtype=np.uint64) * layout.block_nbytes
    descriptors[:, 1] = layout.block_nbytes
    return descriptors


def buffer_address(buffer: np.ndarray) -> int:
    return int(buffer.ctypes.data)
