"""What makes a node a prefill or a decode node: a `NodeRole`, defined by each role package.

The role owns its defaults (ports, CPU core), the KV role its vLLM connector runs as, the connector policy it
adds to any transport's `kv_transfer_config`, and its help text. Everything else about a node is shared
(`node.settings`, `node.launch`, `node.supervisor`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

RoleName = Literal["prefill", "decode"]


@dataclass(frozen=True)
class RoleDefaults:
    """A role's default ports and CPU core (the core only on CPU hosts with at least two cores)."""

    port: int  # the vLLM OpenAI server
    info_port: int  # the supervisor's /info and /health
    kv_port: int  # the KV endpoint (NIXL side channel, tcp block server)
    cpu_cores: str  # VLLM_CPU_OMP_THREADS_BIND

    def as_settings(self) -> dict[str, Any]:
        return {"port": self.port, "info_port": self.info_port, "kv_port": self.kv_port}


@dataclass(frozen=True)
class NodeRole:
    """One role. `kv_role` is vLLM's (`kv_producer`, `kv_consumer`); `connector_policy` is merged into the
    node's `kv_transfer_config` whatever the transport (e.g. how a decode node treats a failed pull)."""

    name: RoleName
    kv_role: str
    defaults: RoleDefaults
    help: str
    connector_policy: dict[str, Any] = field(default_factory=dict)
