"""TEMPORARY shim while the node settings move to `node/` (issue 13): TransportSettings over the registry."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from core.errors import ConfigError
from transport import registry
from transport.base import KvLink
from transport.nixl.ucx_link import ucx_env

KV_ROLES = {"prefill": "kv_producer", "decode": "kv_consumer"}
TRANSPORTS = registry.names()


@dataclass(frozen=True)
class TransportSettings:
    name: str
    role: str
    kv_host: str = "127.0.0.1"
    kv_port: int = 5600
    kv_bind_host: str | None = None
    kv_buffer_device: str = "cpu"
    lease_s: float = 30.0
    transfer_timeout_s: float = 30.0
    link: str = "auto"
    net_device: str = ""
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        transport = registry.get(self.name)
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
        ucx_env(self.link)
        transport.check(self.link_settings)

    @property
    def link_settings(self) -> KvLink:
        return KvLink(role=self.role, kv_host=self.kv_host, kv_port=self.kv_port, kv_bind_host=self.kv_bind_host,
                      kv_buffer_device=self.kv_buffer_device, lease_s=self.lease_s,
                      transfer_timeout_s=self.transfer_timeout_s, link=self.link, net_device=self.net_device)

    @property
    def kv_role(self) -> str:
        return KV_ROLES[self.role] if self.name != "none" else "none"


def kv_transfer_config(settings: TransportSettings) -> dict[str, Any] | None:
    config = registry.get(settings.name).kv_transfer_config(settings.link_settings)
    if config is None:
        return None
    config["kv_role"] = settings.kv_role
    if settings.role == "decode":
        config["kv_load_failure_policy"] = "recompute"
    return config


def transport_env(settings: TransportSettings) -> dict[str, str]:
    env = dict(registry.get(settings.name).env(settings.link_settings))
    env.update(settings.env)
    return env


def vllm_args(settings: TransportSettings) -> list[str]:
    config = kv_transfer_config(settings)
    return [] if config is None else ["--kv-transfer-config", json.dumps(config)]
