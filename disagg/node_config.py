"""Settings of a node (prefill or decode): one frozen dataclass per role, and the vLLM command it implies.

`PrefillConfig` and `DecodeConfig` differ in role and default ports; both turn into the same kind of
vLLM OpenAI server command line and environment (`vllm_command`, `vllm_env`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from core.cluster_token import MIDDLEWARE_IMPORT_PATH
from core.errors import ConfigError
from transport.config import TransportSettings, transport_env, vllm_args
from core.cluster_token import CLUSTER_TOKEN_ENV


@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    """Everything a node supervisor needs. Built from the CLI or a cluster file, in one place each."""

    role: str
    model_dir: Path
    served_model_name: str
    transport: TransportSettings
    transport_reason: str = "chosen on the command line"
    host: str = "127.0.0.1"  # vLLM server bind address
    port: int = 8100  # vLLM server port
    info_port: int = 8101  # this supervisor's /info and /health
    cuda: bool = False
    cpu_cores: str | None = None  # VLLM_CPU_OMP_THREADS_BIND on CPU hosts, e.g. "0" or "0-3"
    kv_cache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE on CPU hosts
    dtype: str = "float32"
    max_model_len: int = 2048
    enforce_eager: bool = True
    prefix_caching: bool = True
    extra_vllm_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 600.0
    max_restarts: int = 0  # restart a vLLM server that dies this many times before the node gives up
    cluster_token: str | None = field(default=None, repr=False)  # HTTP + tcp KV; to vLLM through its env

    def __post_init__(self) -> None:
        if self.role not in ("prefill", "decode"):
            raise ConfigError(f"role must be 'prefill' or 'decode', not {self.role!r}")
        if self.transport.role != self.role:
            raise ConfigError(f"transport settings are for {self.transport.role}, node is {self.role}")
        if not (self.model_dir / "config.json").is_file():
            raise ConfigError(f"model folder {self.model_dir} has no config.json")
        for name in ("port", "info_port"):
            if not 0 < getattr(self, name) < 65536:
                raise ConfigError(f"{name} {getattr(self, name)} out of range")
        if self.port == self.info_port:
            raise ConfigError("port and info_port must differ")
        if self.max_model_len < 16 or self.kv_cache_gib < 1 or self.ready_timeout_s <= 0:
            raise ConfigError("max_model_len >= 16, kv_cache_gib >= 1 and ready_timeout_s > 0 are required")
        if self.max_restarts < 0:
            raise ConfigError(f"max_restarts must be >= 0, not {self.max_restarts}")

    @property
    def vllm_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"


@dataclass(frozen=True, kw_only=True)
class PrefillConfig(NodeConfig):
    role: str = "prefill"


@dataclass(frozen=True, kw_only=True)
class DecodeConfig(NodeConfig):
    role: str = "decode"
    port: int = 8200
    info_port: int = 8201


def vllm_command(config: NodeConfig) -> list[str]:
    """The vLLM OpenAI server command line (the module, since `vllm serve` needs the `vllm` dist name)."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
           "--model", str(config.model_dir), "--served-model-name", config.served_model_name,
           "--host", config.host, "--port", str(config.port),
           "--dtype", config.dtype, "--max-model-len", str(config.max_model_len)]
    if config.enforce_eager:
        cmd.append("--enforce-eager")
    if not config.prefix_caching:
        cmd.append("--no-enable-prefix-caching")
    cmd += vllm_args(config.transport)
    if config.cluster_token:  # the token itself goes through the environment (`vllm_env`)
        cmd += ["--middleware", MIDDLEWARE_IMPORT_PATH]
    cmd += list(config.extra_vllm_args)
    return cmd


def vllm_env(config: NodeConfig, base_env: dict[str, str]) -> dict[str, str]:
    """The server's environment: the caller's, plus CPU binding and transport settings."""
    env = dict(base_env)
    if not config.cuda:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(config.kv_cache_gib)
        if config.cpu_cores is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = config.cpu_cores
    env.update(transport_env(config.transport))
    if config.cluster_token:
        env[CLUSTER_TOKEN_ENV] = config.cluster_token  # not on the command line: every user can read that
    env.update(config.env)
    return env
