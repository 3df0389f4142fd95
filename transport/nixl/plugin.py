"""The `nixl` transport: vLLM's NixlConnector, with NIXL's UCX backend underneath.

KV lives in a pinned host buffer on CPU-only hosts and on GPUs without GPUDirect RDMA (DGX Spark / GB10:
`kv_buffer_device: "cpu"`), else in GPU memory. UCX's transports follow the kind of link (`ucx_link`). The
prefill side keeps blocks nobody pulls for `kv_lease_duration` seconds (decode heartbeats extend it).
`auto` picks it where UCX has a fast path: the peer on this host (shared memory) or an RDMA device.
"""

from __future__ import annotations

import importlib
from typing import Any

from core.errors import ConfigError
from transport.base import BenchMethod, Fit, KvLink, LinkFacts, TransferMetricNames, Transport
from transport.nixl.ucx_link import ucx_env


class NixlTransport(Transport):
    name = "nixl"
    summary = "vLLM's NixlConnector over UCX (RDMA, shared memory, or UCX's TCP)"
    metric_names = TransferMetricNames("vllm:nixl_xfer_time_seconds_sum", "vllm:nixl_xfer_time_seconds_count",
                                       "vllm:nixl_bytes_transferred_sum")
    bench_methods = (
        BenchMethod("nixl-ucx", "NIXL READ of the KV blocks, UCX backend with its default transports, 2 processes",
                    "bench.xfer.nixl_peers:NixlSource", "bench.xfer.nixl_peers:NixlSink"),
        BenchMethod("nixl-ucx-tcp", "NIXL READ of the KV blocks, UCX restricted to TCP (UCX_TLS=tcp), 2 processes",
                    "bench.xfer.nixl_peers:NixlSource", "bench.xfer.nixl_peers:NixlSink", {"UCX_TLS": "tcp"}),
    )

    def installed(self) -> Fit:
        try:
            importlib.import_module("nixl")
        except ImportError:
            return Fit(False, "NIXL is not installed here")
        return Fit(True, "NIXL imports")

    def fit_for_auto(self, facts: LinkFacts) -> Fit:
        if facts.peer_is_local:
            return Fit(True, f"peer {facts.peer_host} is on this host (UCX shared memory)")
        if facts.rdma_devices:
            return Fit(True, f"RDMA devices {', '.join(facts.rdma_devices)} (UCX RDMA)")
        return Fit(False, "no RDMA device and the peer is remote: UCX would carry KV over its TCP transport, "
                          "slower than the tcp transport, and its progress thread busy-polls a core while idle")

    def check(self, link: KvLink) -> None:
        ucx_env(link.link)  # raises for an unknown link type
        if link.kv_bind_host is not None and link.kv_bind_host != link.kv_host:
            raise ConfigError("nixl binds its KV side channel on the address it advertises (--kv-host); "
                              "a different --kv-bind-host needs the tcp transport")

    def kv_transfer_config(self, link: KvLink) -> dict[str, Any] | None:
        extra = {"kv_lease_duration": max(1, round(link.lease_s)), "progress_thread": False}
        return {"kv_connector": "NixlConnector", "kv_connector_module_path": "transport.nixl.connector",
                "kv_buffer_device": link.kv_buffer_device, "kv_connector_extra_config": extra}

    def env(self, link: KvLink) -> dict[str, str]:
        return {**ucx_env(link.link, link.kv_buffer_device, link.net_device),
                "VLLM_NIXL_SIDE_CHANNEL_HOST": link.kv_host, "VLLM_NIXL_SIDE_CHANNEL_PORT": str(link.kv_port)}

    def doctor(self) -> dict[str, Any]:
        """NIXL's version, plugins and UCX backend, with UCX's own view as the `ucx` section, probed in a child
        process (`transport.nixl.native_probe`)."""
        from transport.nixl.native_probe import probe_in_child

        return probe_in_child()

    def loopback(self, size_bytes: int, repeats: int) -> dict[str, Any] | None:
        """A NIXL READ between two agents in a child process (`transport.nixl.loopback`)."""
        fit = self.installed()
        if not fit.ok:
            return {"status": "not installed", "reason": fit.reason}
        from transport.nixl.loopback import measure_in_child

        return measure_in_child(size_bytes, repeats)
