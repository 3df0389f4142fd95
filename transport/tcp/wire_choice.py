"""`kv_wire_dtype = "auto"`: the wire dtype that moves a pull's KV soonest, by a stated cost model.

For KV of B bytes, a link of L bytes/s, and a wire dtype w that sends r_w·B bytes (`wire_dtype.ratio`), whose
codec converts E_w bytes of KV per second on the prefill side and restores D_w per second on the decode side:

    time(w) = r_w·B / L  +  B / E_w  +  B / D_w          (native: r = 1, no conversion: B / L)

The three terms are added, as if nothing overlapped. The transport does overlap them (it converts about
1 MiB per frame while the previous frame is on the wire), so the real time is nearer the largest term; the
sum is an upper bound, which errs toward native: a lossy wire dtype is only picked where it wins even
without the overlap. Ties go to the less lossy one (native, bf16, fp16, int8, in that order). Fixed costs
per pull (connection, first frame, release) are the same for every wire dtype and left out.

Where the figures come from on a node: L is the setting `kv_link_gbit_per_s` (the operator knows the link;
`disagg bench compare` measures one); E and D are measured once when the node maps its KV cache
(`transport.tcp.codec.measure_throughput` on KV-shaped rows of the cache's dtype), on the decode node, and
taken for the prefill node's too (both nodes of a cluster run the same hardware; where they do not, set
the wire dtype instead of `auto`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from transport.tcp.wire_dtype import WireDtype


@dataclass(frozen=True)
class CodecThroughput:
    """Bytes of KV per second a wire dtype's codec converts (`encode`, prefill side) and restores (`decode`)."""

    encode_bytes_per_s: float
    decode_bytes_per_s: float


@dataclass(frozen=True)
class WireCost:
    """The model's time for one wire dtype, term by term (seconds)."""

    wire: WireDtype
    wire_nbytes: int
    transfer_s: float
    encode_s: float
    decode_s: float

    @property
    def total_s(self) -> float:
        return self.transfer_s + self.encode_s + self.decode_s

    def describe(self) -> str:
        return (f"{self.wire.label} {self.total_s * 1e3:.2f} ms (wire {self.transfer_s * 1e3:.2f} + convert "
                f"{self.encode_s * 1e3:.2f} + restore {self.decode_s * 1e3:.2f})")


@dataclass(frozen=True)
class WireChoice:
    wire: WireDtype
    costs: tuple[WireCost, ...]  # every candidate, in preference order

    @property
    def reason(self) -> str:
        return f"picked {self.wire.label}: " + ", ".join(cost.describe() for cost in self.costs)


def cost(wire: WireDtype, kv_nbytes: int, link_bytes_per_s: float, ratio: float,
         throughput: CodecThroughput | None) -> WireCost:
    """The model's time for `wire`; `throughput` None only for native."""
    if link_bytes_per_s <= 0:
        raise ValueError(f"link bandwidth must be > 0 bytes/s, not {link_bytes_per_s}")
    wire_nbytes = round(kv_nbytes * ratio)
    if wire is WireDtype.NATIVE or throughput is None:
        if wire is not WireDtype.NATIVE:
            raise ValueError(f"{wire.label} needs its codec's throughput")
        return WireCost(wire, kv_nbytes, kv_nbytes / link_bytes_per_s, 0.0, 0.0)
    if throughput.encode_bytes_per_s <= 0 or throughput.decode_bytes_per_s <= 0:
        raise ValueError(f"{wire.label}: codec throughput must be > 0, not {throughput}")
    return WireCost(wire, wire_nbytes, wire_nbytes / link_bytes_per_s, kv_nbytes / throughput.encode_bytes_per_s,
                    kv_nbytes / throughput.decode_bytes_per_s)


def choose(kv_nbytes: int, link_bytes_per_s: float, ratios: Mapping[WireDtype, float],
           throughputs: Mapping[WireDtype, CodecThroughput]) -> WireChoice:
    """The wire dtype with the least modelled time among native and every dtype in both `ratios` (wire bytes
    over KV bytes) and `throughputs`; ValueError for a bandwidth or throughput that is not positive."""
    candidates = [WireDtype.NATIVE] + [w for w in WireDtype if w is not WireDtype.NATIVE
                                        and w in ratios and w in throughputs]
    costs = tuple(cost(w, kv_nbytes, link_bytes_per_s, ratios.get(w, 1.0), throughputs.get(w)) for w in candidates)
    best = min(costs, key=lambda c: c.total_s)  # min keeps the first of equals: the less lossy
    return WireChoice(best.wire, costs)
