"""KV-cache-shaped numpy arrays for transport tests: one [blocks, *block_shape] float32 array per layer."""

from __future__ import annotations

import numpy as np


def kv_arrays(layers: int, blocks: int, block_shape: tuple[int, ...], seed: int | None) -> list[np.ndarray]:
    """Random values from `seed`, or zeros (a destination) when `seed` is None."""
    if seed is None:
        return [np.zeros((blocks, *block_shape), dtype=np.float32) for _ in range(layers)]
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((blocks, *block_shape), dtype=np.float32) for _ in range(layers)]
