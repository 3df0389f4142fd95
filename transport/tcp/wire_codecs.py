"""Decode side: which wire dtype a pull uses on this node, and the codec that restores it.

The choice, in order: the request's `kv_transfer_params["kv_wire_dtype"]`, else the node's `wire_dtype`
setting; `auto` is resolved per pull by `transport.tcp.wire_choice` with the node's `link_gbit_per_s` and this
host's codec throughput (measured on first use); the result is then limited to what applies to this KV cache
(`wire_dtype.effective`: e.g. native for an FP8 cache). The prefill side needs no choice: it converts to what
each PULL asks for.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from transport.tcp.blocks import BlockStore
from transport.tcp.settings import TcpConnectorSettings
from transport.tcp.wire_choice import CodecThroughput, choose
from transport.tcp.wire_dtype import AUTO, WireDtype, effective, parse, ratio

if TYPE_CHECKING:
    from transport.tcp.codec import Codec

logger = logging.getLogger(__name__)


class WireCodecs:
    """The wire dtypes and codecs of one node's KV store (thread-safe: pulls run on a pool)."""

    def __init__(self, settings: TcpConnectorSettings, store: BlockStore) -> None:
        self.settings, self.store = settings, store
        self._lock = threading.Lock()
        self._codecs: dict[WireDtype, Codec] = {}
        self._throughputs: dict[WireDtype, CodecThroughput] | None = None
        self._warned_auto = False

    @property
    def convertible(self) -> bool:
        """Whether any wire dtype other than native applies to this store."""
        return self.store.row_elements is not None and any(
            effective(w, self.store.kv_dtype) is not WireDtype.NATIVE for w in WireDtype)

    def warm_up(self) -> None:
        """Compile the codec's kernels now rather than in the first pull (both roles: prefill converts)."""
        if not self.convertible:
            return
        from transport.tcp.codec import warm_up

        assert self.store.kv_dtype is not None and self.store.row_elements is not None
        logger.info("TCP KV wire codecs for %s rows of %d ready in %.2f s", self.store.kv_dtype,
                    self.store.row_elements, warm_up(self.store.kv_dtype, self.store.row_elements))

    def wire_for(self, requested: str | None, kv_nbytes: int) -> WireDtype:
        """The wire dtype of a pull of `kv_nbytes` whose request asked for `requested` (None: the setting)."""
        name = requested or self.settings.wire_dtype
        if not self.convertible:
            return WireDtype.NATIVE
        if name == AUTO:
            return self._auto(kv_nbytes)
        return effective(parse(name), self.store.kv_dtype)

    def codec(self, wire: WireDtype) -> Codec | None:
        """The codec restoring `wire` into this store (None for native)."""
        if wire is WireDtype.NATIVE:
            return None
        with self._lock:
            if wire not in self._codecs:
                from transport.tcp.codec import Codec

                assert self.store.kv_dtype is not None and self.store.row_elements is not None
                self._codecs[wire] = Codec(wire, self.store.kv_dtype, self.store.row_elements)
            return self._codecs[wire]

    def _auto(self, kv_nbytes: int) -> WireDtype:
        link_bytes_per_s = self.settings.link_bytes_per_s
        if link_bytes_per_s is None:  # a request asked for auto on a node without a link bandwidth
            if not self._warned_auto:
                logger.warning("kv_wire_dtype auto without link_gbit_per_s: sending native")
                self._warned_auto = True
            return WireDtype.NATIVE
        throughputs = self._measured()
        assert self.store.kv_dtype is not None and self.store.row_elements is not None
        ratios = {w: ratio(w, self.store.kv_dtype, self.store.row_elements) for w in throughputs}
        choice = choose(kv_nbytes, link_bytes_per_s, ratios, throughputs)
        logger.debug("kv_wire_dtype auto for %d KV bytes on %.3g Gbit/s: %s", kv_nbytes,
                     link_bytes_per_s * 8 / 1e9, choice.reason)
        return choice.wire

    def _measured(self) -> dict[WireDtype, CodecThroughput]:
        with self._lock:
            if self._throughputs is None:
                from transport.tcp.codec import measure_throughput

                assert self.store.kv_dtype is not None and self.store.row_elements is not None
                found = measure_throughput(self.store.kv_dtype, self.store.row_elements)
                self._throughputs = {w: CodecThroughput(*rates) for w, rates in found.items()}
                logger.info("TCP KV codec throughput (KV GB/s, convert/restore): %s", ", ".join(
                    f"{w.label} {t.encode_bytes_per_s / 1e9:.2f}/{t.decode_bytes_per_s / 1e9:.2f}"
                    for w, t in self._throughputs.items()))
            return self._throughputs
