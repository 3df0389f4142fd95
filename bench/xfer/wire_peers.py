"""Benchmark peers for our TCP connector with a KV wire dtype (`transport.tcp.wire_dtype`): the source holds
float32 KV (rows of 64 elements, as SmolLM2's heads) and converts each frame as it sends, the sink restores
into its own float32 buffer. Timed as `bench.xfer.peers.TcpConnectorSink` (connect to the last frame
restored); GB/s are of KV delivered, so they compare with `tcp-connector` moving the same KV natively.

The values are a pattern any process recomputes (`kv_values`: 8-byte words of `bench.xfer.buffers`' pattern
mapped to floats in [-0.5, 0.5)); the sink checks what it restored against it within the wire dtype's bound
(`transport.tcp.codec`), over every row up to 64 MiB and evenly spaced windows above.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.xfer.buffers import empty_buffer, layer_arrays, layout_for
from bench.xfer.peers import TRANSFER_TIMEOUT_S, TcpConnectorSource
from transport.tcp.blocks import RegionBlockStore
from transport.tcp.client import pull_blocks
from transport.tcp.wire import PullRequest
from transport.tcp.wire_dtype import WireDtype

ROW_ELEMENTS = 64
KV_DTYPE = "float32"
_FACTOR = np.uint64(0x9E3779B97F4A7C15)
_CHUNK_ELEMENTS = 4 * 2**20
_FULL_CHECK_MAX_BYTES = 64 * 2**20
_SAMPLE_WINDOWS, _SAMPLE_ROWS = 64, 256


def kv_values(start: int, count: int) -> np.ndarray:
    """Float32 elements start .. start + count - 1 of the pattern, in [-0.5, 0.5) (exactly representable)."""
    words = np.arange(start, start + count, dtype=np.uint64) * _FACTOR
    mantissa = (words >> np.uint64(41)).astype(np.uint32) | np.uint32(0x3F800000)  # [1, 2)
    return mantissa.view(np.float32) - np.float32(1.5)


def kv_buffer(size_bytes: int) -> np.ndarray:
    buffer = np.empty(size_bytes, dtype=np.uint8)
    values = buffer.view(np.float32)
    for start in range(0, len(values), _CHUNK_ELEMENTS):
        end = min(start + _CHUNK_ELEMENTS, len(values))
        values[start:end] = kv_values(start, end - start)
    return buffer


def holds_kv(buffer: np.ndarray, wire_dtype: WireDtype) -> bool:
    """True when every checked row is within `wire_dtype`'s bound of the pattern."""
    values = buffer.view(np.float32)
    rows = len(values) // ROW_ELEMENTS
    if buffer.nbytes <= _FULL_CHECK_MAX_BYTES:
        windows = [(0, rows)]
    else:
        step = rows // _SAMPLE_WINDOWS
        windows = [(start, min(start + _SAMPLE_ROWS, rows)) for start in range(0, rows - _SAMPLE_ROWS, step)]
    for first, last in windows:
        got = values[first * ROW_ELEMENTS:last * ROW_ELEMENTS].reshape(-1, ROW_ELEMENTS)
        want = kv_values(first * ROW_ELEMENTS, (last - first) * ROW_ELEMENTS).reshape(-1, ROW_ELEMENTS)
        if not (np.abs(got - want) <= _bound(want, wire_dtype)).all():
            return False
    return True


def _bound(want: np.ndarray, wire_dtype: WireDtype) -> np.ndarray | float:
    if wire_dtype is WireDtype.INT8:
        peak = np.abs(want).max(axis=1, keepdims=True)
        return peak / 254 + 4 * 2.0**-24 * peak
    if wire_dtype is WireDtype.BF16:
        return 2.0**-8 * np.abs(want)
    if wire_dtype is WireDtype.FP16:
        return 2.0**-11 * np.abs(want) + 2.0**-25
    return 0.0


class FloatKvSource(TcpConnectorSource):
    """Publishes float32 KV on a block server that converts to whatever wire dtype a pull asks for."""

    def _make_buffer(self, size_bytes: int) -> np.ndarray:
        return kv_buffer(size_bytes)

    def _make_store(self, arrays: list[np.ndarray]) -> RegionBlockStore:
        return RegionBlockStore.from_arrays(arrays, kv_dtype=KV_DTYPE, row_elements=ROW_ELEMENTS)


class _WireSink:
    """Pulls in `WIRE` (a subclass sets it), one connection per pull, and checks the restored values."""

    WIRE = WireDtype.NATIVE

    def pull(self, endpoint: dict[str, Any], size_bytes: int, repeats: int) -> dict[str, Any]:
        from transport.tcp.codec import Codec, warm_up

        warm_up(KV_DTYPE, ROW_ELEMENTS)
        layout = layout_for(size_bytes)
        buffer = empty_buffer(size_bytes)
        store = RegionBlockStore.from_arrays(layer_arrays(buffer, layout), layout_id=endpoint["layout_id"],
                                             kv_dtype=KV_DTYPE, row_elements=ROW_ELEMENTS)
        request = PullRequest(0, endpoint["num_blocks"], endpoint["block_nbytes"], endpoint["layout_id"], self.WIRE)
        codec = None if self.WIRE is WireDtype.NATIVE else Codec(self.WIRE, KV_DTYPE, ROW_ELEMENTS)
        views, commit = store.write_views(list(range(layout.num_blocks)))
        seconds, wire_nbytes = [], 0
        for index in range(repeats + 1):
            result = pull_blocks(endpoint["host"], endpoint["port"], f"bench-{index}", request, views,
                                 transfer_timeout_s=TRANSFER_TIMEOUT_S, codec=codec)
            commit()
            seconds.append(result.seconds)
            wire_nbytes = result.wire_nbytes
        return {"seconds": seconds[1:], "verified": holds_kv(buffer, self.WIRE), "wire_nbytes": wire_nbytes}


class Int8Sink(_WireSink):
    WIRE = WireDtype.INT8


class Bf16Sink(_WireSink):
    WIRE = WireDtype.BF16


class Fp16Sink(_WireSink):
    WIRE = WireDtype.FP16
