"""The `tcp` transport: our connector (`transport.tcp.connector`), loaded by vLLM through its module path.

One TCP exchange per request moves all of its blocks (length-prefixed frames, CRC-32C, no pickle); the
prefill side keeps blocks for `lease_s` if nobody pulls; a pull may take `transfer_timeout_s`. `auto` picks it
wherever NIXL has no fast path (a remote peer without RDMA), since UCX over TCP is slower than this.
"""

from __future__ import annotations

from typing import Any

from transport.base import BenchMethod, Fit, KvLink, LinkFacts, TransferMetricNames, Transport


class TcpTransport(Transport):
    name = "tcp"
    summary = "our TCP KV connector: one stream per transfer, CRC-checked frames, no pickle"
    metric_names = TransferMetricNames("vllm:disagg_tcp_kv_pull_seconds_sum", "vllm:disagg_tcp_kv_pull_seconds_count",
                                       "vllm:disagg_tcp_kv_pulled_bytes_total")
    bench_methods = (
        BenchMethod("tcp-connector", "our TCP KV connector: BlockServer -> pull_blocks, framed, CRC-32C, 2 processes",
                    "bench.xfer.peers:TcpConnectorSource", "bench.xfer.peers:TcpConnectorSink"),
        *(BenchMethod(f"tcp-connector-{wire}", f"the same, float32 KV sent as {wire} ({what}) and restored; GB/s of "
                      "KV delivered", "bench.xfer.wire_peers:FloatKvSource", f"bench.xfer.wire_peers:{sink}")
          for wire, what, sink in (("int8", "a scale per row of 64: 68/256 of the bytes", "Int8Sink"),
                                   ("bf16", "half the bytes", "Bf16Sink"), ("fp16", "half the bytes", "Fp16Sink"))),
    )

    def fit_for_auto(self, facts: LinkFacts) -> Fit:
        return Fit(True, "any IP link")

    def kv_transfer_config(self, link: KvLink) -> dict[str, Any] | None:
        extra: dict[str, Any] = {"host": link.kv_host, "port": link.kv_port, "lease_s": link.lease_s,
                                 "transfer_timeout_s": link.transfer_timeout_s}
        if link.kv_bind_host is not None:
            extra["bind_host"] = link.kv_bind_host
        if link.kv_wire_dtype != "native":
            extra["wire_dtype"] = link.kv_wire_dtype
        if link.kv_link_gbit_per_s is not None:
            extra["link_gbit_per_s"] = link.kv_link_gbit_per_s
        return {"kv_connector": "DisaggTcpConnector", "kv_connector_module_path": "transport.tcp.connector",
                "kv_connector_extra_config": extra}

    def doctor(self) -> dict[str, Any]:
        return {"status": "ok", "reason": "built in (needs only a TCP path to the peer)"}

    def loopback(self, size_bytes: int, repeats: int) -> dict[str, Any] | None:
        """Its own block server and pull client in this process (`transport.tcp.loopback`)."""
        from transport.tcp.loopback import measure

        return measure(size_bytes, repeats)
