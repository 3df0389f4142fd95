"""Transport choice and the vLLM `kv_transfer_config` + environment it needs, per node role.

`nixl`: vLLM's NixlConnector (UCX underneath; RDMA, shared memory or TCP). KV lives in a host buffer on
CPU-only hosts and on GPUs without GPUDirect RDMA (DGX Spark / GB10), else in GPU memory.
`tcp`: our connector (`transport.tcp.connector`), one TCP stream per transfer.
`none`: no connector; the node serves requests colocated only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from core.errors import ConfigError
from transport.ucx_link import ucx_env

Transport = Literal["nixl", "tcp", "none"]
TRANSPORTS: tuple[str, ...] = ("nixl", "tcp", "none")
KV_ROLES = {"prefill": "kv_producer", "decode": "kv_consumer"}


@dataclass(frozen=True)
class TransportSettings:
    """What a node needs to know to set up its side of the KV link."""

    name: str
    role: str  # "prefill" | "decode"
    kv_host: str = "127.0.0.1"  # address the peer reaches this node's KV endpoint on
    kv_port: int = 5600  # NIXL side channel / our TCP server port
    kv_bind_host: str | None = None  # tcp: the block server's bind address when it differs from kv_host
    kv_buffer_device: str = "cpu"  # "cpu" (pinned host buffer) or "cuda"
    lease_s: float = 30.0
    transfer_timeout_s: float = 30.0  # tcp: one whole pull, both sides; past it the decode node recomputes
    link: str = "auto"  # nixl: the UCX settings for this kind of link (`transport.ucx_link`)
    net_device: str = ""  # nixl: UCX_NET_DEVICES, e.g. mlx5_0:1
    env: dict[str, str] = field(default_factory=dict)  # per-link extras, e.g. UCX_IB_GID_INDEX

    def __post_init__(self) -> None:
        if self.name not in TRANSPORTS:
            raise ConfigError(f"transport must be one of {TRANSPORTS}, not {self.name!r}")
        if self.role not in KV_ROLES:
            raise ConfigError(f"role must be 'prefill' or 'decode', not {self.role!r}")
        if not 0 < self.kv_port < 65536:
            raise ConfigError(f"kv_port {self.kv_port} out of range")
        if not 1.0 <= self.lease_s <= 3600.0:
            raise ConfigError(f"KV lease must be 1..3600 s, not {self.lease_s}")
        if not 0.1 <= self.transfer_timeout_s <= 3600.0:
            raise ConfigError(f"KV transfer timeout must be 0.1..3600 s, not {self.transfer_timeout_s}")
        if self.kv_buffer_device not in ("cpu", "cuda"):
            raise ConfigError(f"kv_buffer_device must be 'cpu' or 'cuda', not {self.kv_buffer_device!r}")
        ucx_env(self.link)  # raises for an unknown link type
        if self.kv_bind_host is not None and self.name == "nixl" and self.kv_bind_host != self.kv_host:
            raise ConfigError("nixl binds its KV side channel on the address it advertises (--kv-host); "
                              "a different --kv-bind-host needs the tcp transport")

    @property
    def kv_role(self) -> str:
        return KV_ROLES[self.role] if self.name != "none" else "none"


def kv_transfer_config(settings: TransportSettings) -> dict[str, Any] | None:
    """vLLM's `--kv-transfer-config` for this node, or None for `none`.

    A decode node whose KV pull fails (peer gone, lease expired, checksum mismatch) recomputes the
    prompt itself (`kv_load_failure_policy: recompute`): it never decodes from missing or corrupt KV.
    """
    if settings.name == "none":
        return None
    if settings.name == "nixl":
        # kv_lease_duration: seconds the prefill side keeps blocks nobody pulled (decode heartbeats extend it).
        config = {"kv_connector": "NixlConnector", "kv_buffer_device": settings.kv_buffer_device,
                  "kv_connector_extra_config": {"kv_lease_duration": max(1, round(settings.lease_s))}}
    else:
        extra = {"host": settings.kv_host, "port": settings.kv_port, "lease_s": settings.lease_s,
                 "transfer_timeout_s": settings.transfer_timeout_s}
        if settings.kv_bind_host is not None:
            extra["bind_host"] = settings.kv_bind_host
        config = {"kv_connector": "DisaggTcpConnector", "kv_connector_module_path": "transport.tcp.connector",
                  "kv_connector_extra_config": extra}
    config["kv_role"] = settings.kv_role
    if settings.role == "decode":
        config["kv_load_failure_policy"] = "recompute"
    return config


def transport_env(settings: TransportSettings) -> dict[str, str]:
    """Environment variables the vLLM server needs for this transport."""
    env = {}
    if settings.name == "nixl":
        env.update(ucx_env(settings.link, settings.kv_buffer_device, settings.net_device))
        env["VLLM_NIXL_SIDE_CHANNEL_HOST"] = settings.kv_host
        env["VLLM_NIXL_SIDE_CHANNEL_PORT"] = str(settings.kv_port)
    env.update(settings.env)
    return env


def vllm_args(settings: TransportSettings) -> list[str]:
    config = kv_transfer_config(settings)
    return [] if config is None else ["--kv-transfer-config", json.dumps(config)]
