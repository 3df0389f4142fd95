"""What a KV transport is: a small interface every transport implements, plus the values it is given.

A transport (`nixl`, `tcp`, `none`, ...) is one module holding a `Transport` subclass and one line in
`transport.registry`. Everything that varies by transport asks the registry for it instead of spelling the
names: the node (its vLLM `kv_transfer_config` and environment), `--transport auto` (which one suits a
link), the cluster file (which names it accepts), `disagg doctor` (each transport's probe), `disagg bench
transport` (each transport's bench methods) and the bench's KV metrics (each connector's metric names).

Sides, the way vLLM documents its connectors: `kv_transfer_config`, `env` and `fit_for_auto` run in the node
supervisor before vLLM starts (no vLLM, no torch); `installed` and `doctor` may import the transport's
native library, but only inside the call; nothing here runs inside vLLM.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

Role = Literal["prefill", "decode"]


@dataclass(frozen=True)
class KvLink:
    """One node's side of the KV link, as the node settings describe it (units in the names).

    `kv_host` is where the peer reaches this node's KV endpoint, `kv_port` its port; `kv_bind_host` what a
    transport that binds separately listens on (None: `kv_host`); `kv_buffer_device` where KV is registered
    for the transfer ("cpu": a pinned host buffer; "cuda": GPU memory, needs GPUDirect RDMA); `lease_s` how
    long a prefill node keeps blocks nobody pulls; `transfer_timeout_s` how long one pull may take;
    `link` and `net_device` the kind of link and its device (UCX's view: roce, ib, tcp, shm, auto);
    `peer_is_local` whether the peer node runs on this host; `kv_wire_dtype` and `kv_link_gbit_per_s` what
    the decode side asks the KV to cross the link as (a transport that cannot convert ignores them).
    """

    role: Role
    kv_host: str = "127.0.0.1"
    kv_port: int = 5601
    kv_bind_host: str | None = None
    kv_buffer_device: str = "cpu"
    lease_s: float = 30.0
    transfer_timeout_s: float = 30.0
    link: str = "auto"
    net_device: str = ""
    peer_is_local: bool = False  # the peer node runs on this host (a transport may use shared memory)
    kv_wire_dtype: str = "native"  # what a pull asks the KV to cross the link as (tcp: transport.tcp.wire_dtype)
    kv_link_gbit_per_s: float | None = None  # the link's bandwidth, for kv_wire_dtype "auto"


@dataclass(frozen=True)
class LinkFacts:
    """What `--transport auto` knows about a link: the peer, and this host (see `transport.facts`)."""

    peer_host: str
    peer_is_local: bool
    rdma_devices: tuple[str, ...] = ()
    cuda: bool = False


@dataclass(frozen=True)
class Fit:
    """Whether something holds (a transport is installed; suits a link), and the reason, in words."""

    ok: bool
    reason: str


@dataclass(frozen=True)
class TransferMetricNames:
    """Prometheus sample names of one connector's transfers on the decode node (after suffixing):
    seconds per transfer (`_sum`, `_count`) and bytes moved."""

    time_sum: str
    time_count: str
    bytes_sum: str


@dataclass(frozen=True)
class BenchMethod:
    """One way `disagg bench transport` moves KV-shaped bytes: a source and a sink peer class
    ("module:Class", run in two processes by `bench.xfer`), with extra environment for both."""

    name: str
    description: str
    source_class: str
    sink_class: str
    env: dict[str, str] = field(default_factory=dict)


class Transport(ABC):
    """A KV transport. Subclasses set the class attributes and implement the methods below."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for --help and doctor
    metric_names: ClassVar[TransferMetricNames | None] = None
    bench_methods: ClassVar[tuple[BenchMethod, ...]] = ()

    def installed(self) -> Fit:
        """Whether this host can run it (its library imports). Default: yes."""
        return Fit(True, "built in")

    @abstractmethod
    def fit_for_auto(self, facts: LinkFacts) -> Fit:
        """Whether `--transport auto` should pick it for this link (asked in registry order)."""

    @abstractmethod
    def kv_transfer_config(self, link: KvLink) -> dict[str, Any] | None:
        """vLLM's `--kv-transfer-config` for this node without `kv_role` (the role adds it), or None for
        no connector."""

    def env(self, link: KvLink) -> dict[str, str]:
        """Environment variables the vLLM server needs for it. Default: none."""
        return {}

    def check(self, link: KvLink) -> None:
        """Raise ConfigError when `link` asks for something this transport cannot do. Default: nothing."""

    def doctor(self) -> dict[str, Any]:
        """Its section of `disagg doctor`: `status` ("ok", "not installed", "unavailable") and what it found.

        A probe that also looks at a library underneath may return that library's findings as whole sections
        under the key `sections` ({name: section}); doctor lists them right after this one (nixl: `ucx`).
        Exceptions are reported by doctor as `status: unavailable`. Default: `installed()`'s answer.
        """
        fit = self.installed()
        return {"status": "ok" if fit.ok else "not installed", "reason": fit.reason}

    def loopback(self, size_bytes: int, repeats: int) -> dict[str, Any] | None:
        """`disagg doctor`'s bandwidth check: `size_bytes` moved through this transport's own data path on
        127.0.0.1, one warm-up then `repeats` timed transfers, as {"status": "ok", "gb_per_s": the median in
        10^9 B/s} or {"status": "not installed" | "unavailable" | "failed", "reason": ...}. None: nothing to
        measure (the default). May raise; doctor reports the exception as unavailable."""
        return None
