"""The cluster file: a TOML description of a cluster (hosts, nodes, router, engine settings).

`load(path)` reads and validates it; every error names the file, the field and what is wrong, e.g.
`spark.toml: prefill.host: 'spark-03' is not in [hosts] (known: spark-01, spark-02)`. The schema:

    name = "spark-pair"                    # names the run folder on each host
    model = "~/models/Llama-3.1-8B-Instruct"   # a Hugging Face folder, at this path on every node host
    transport = "auto"                     # a transport of transport/registry.py: nixl | tcp | auto (default)
    token_file = "~/.config/disagg/cluster-token"   # the cluster token, at this path on every host (optional)
    [ssh]       user, port, identity_file, options = ["Key=Value", ...], connect_timeout_s
    [hosts.NAME] address (HTTP), kv_address (KV link; default: address), kv_bind (tcp: what the KV server
                binds; default: kv_address), ssh_address, ssh_user, ssh_port, local (run here, without ssh),
                disagg (its path there), env = {UCX_NET_DEVICES = "..."}
    [prefill]   host, port, info_port, kv_port, cpu_cores      (and [decode], the same)
    [router]    host ("local": the machine running `disagg up`), bind, port, baseline_port, prefill_policy and
                decode_policy (router.policies: round_robin, load_aware, prefix_aware; prefix_aware needs
                kv_events = true in [engine]), disagg_policy (router.decider: always, never, conditional)
    [engine]    the fields of node.settings.EngineSettings: max_model_len, dtype, prefix_caching,
                kv_buffer_device, kv_cache_gib, kv_lease_s, kv_transfer_timeout_s, restart_on_crash, vllm_args
                (kv_tier*: the KV tier, which [kv_tier] says better; give it in one place)
    [kv_tier]   a KV tier the prefill nodes share (transport/kv_tier): backend ("redis" | "disk"), url (redis:
                a server of your own; without it `disagg up` starts one on `host` at `port`, health on
                `health_port`, capped at max_bytes) or path (disk: a directory, shared by the prefill hosts or
                one per host), ttl_s, max_bytes

`[prefill]` and `[decode]` are tables (one node) or arrays of tables (`[[prefill]]`, several nodes, each
with its own ports); the nodes are then called `prefill-1`, `prefill-2`, ... (one alone is `prefill`).
Without `[prefill]` the cluster is colocated: decode nodes without a KV transport, a colocated router.
A node's default ports are its role's (`prefill_node.role`, `decode_node.role`); the router's are
`router.config`'s. See deploy/examples/ for complete files.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from core.errors import ConfigError
from core.settings_flags import describe_validation_error
from decode_node.role import ROLE as DECODE
from deploy.cluster_kv_tier import KvTierSpec, tier_from_engine
from deploy.host_spec import HostSpec, SshSettings, Strict, check_address
from node.settings import DEFAULT_TRANSPORT, EngineSettings
from prefill_node.role import ROLE as PREFILL
from router import policies
from router.config import RouterConfig
from router.prefix_policy import PrefixAware
from transport import registry

LOCAL = "local"  # the router's host when it runs on the machine that runs `disagg up`
ROLES = ("prefill", "decode")
ROUTER_PORT = {f.name: f.default for f in dataclasses.fields(RouterConfig)}["port"]
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


def node_name(role: str, index: int, count: int) -> str:
    """A node's component name: the role when it is the only one, else `role-N` (N from 1)."""
    return role if count == 1 else f"{role}-{index + 1}"


class NodeSpec(Strict):
    """One node: its host (a name in [hosts]), its ports (vLLM, /info + /health, KV) and CPU cores."""

    host: str
    port: int = Field(ge=1, le=65535)
    info_port: int = Field(ge=1, le=65535)
    kv_port: int = Field(ge=1, le=65535)
    cpu_cores: str | None = Field(default=None, pattern=r"^\d+(-\d+)?(,\d+(-\d+)?)*$")

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.port, self.info_port, self.kv_port)


class PrefillSpec(NodeSpec):
    port: int = Field(default=PREFILL.defaults.port, ge=1, le=65535)
    info_port: int = Field(default=PREFILL.defaults.info_port, ge=1, le=65535)
    kv_port: int = Field(default=PREFILL.defaults.kv_port, ge=1, le=65535)


class DecodeSpec(NodeSpec):
    port: int = Field(default=DECODE.defaults.port, ge=1, le=65535)
    info_port: int = Field(default=DECODE.defaults.info_port, ge=1, le=65535)
    kv_port: int = Field(default=DECODE.defaults.kv_port, ge=1, le=65535)


class RouterSpec(Strict):
    host: str = LOCAL
    bind: str | None = None  # default: the host's address (127.0.0.1 for local)
    port: int = Field(default=ROUTER_PORT, ge=1, le=65535)
    baseline_port: int | None = Field(default=None, ge=1, le=65535)  # a colocated router on the decode nodes
    prefill_policy: str | None = None  # router.policies; None: the router's default
    decode_policy: str | None = None  # also the baseline router's
    disagg_policy: Literal["always", "never", "conditional"] | None = None  # router.decider

    _bind = field_validator("bind")(check_address)

    @field_validator("prefill_policy", "decode_policy")
    @classmethod
    def _known_policy(cls, name: str | None) -> str | None:
        if name is not None and name not in policies.names():
            raise ValueError(f"unknown routing policy {name!r}; known: {', '.join(policies.names())}")
        return name

    def policy_args(self, mode: str) -> tuple[str, ...]:
        """The routing flags of a router in `mode` (the decode policy only, for a colocated one)."""
        chosen = {"--decode-policy": self.decode_policy}
        if mode == "disagg":
            chosen |= {"--prefill-policy": self.prefill_policy, "--disagg-policy": self.disagg_policy}
        return tuple(part for flag, value in chosen.items() if value is not None for part in (flag, value))

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.port,) if self.baseline_port is None else (self.port, self.baseline_port)


class ClusterSpec(Strict):
    """A whole cluster. `prefill` and `decode` hold one entry per node (no prefill node: colocated)."""

    name: str = Field(pattern=_NAME)
    model: str = Field(min_length=1)
    served_model_name: str | None = None
    transport: str = DEFAULT_TRANSPORT  # a registered transport with a KV connector, or auto
    run_dir: str | None = None  # pids and logs on each host (default: ~/.cache/disagg/clusters/NAME)
    token_file: str | None = None  # the cluster token, at this path on every host (none: nodes are open)
    ready_timeout_s: float = Field(default=900.0, gt=0)
    ssh: SshSettings = SshSettings()
    hosts: dict[str, HostSpec] = Field(min_length=1)
    prefill: tuple[PrefillSpec, ...] = ()
    decode: tuple[DecodeSpec, ...] = Field(min_length=1)
    router: RouterSpec = RouterSpec()
    engine: EngineSettings = EngineSettings()
    kv_tier: KvTierSpec | None = None

    @field_validator("prefill", "decode", mode="before")
    @classmethod
    def _table_or_array(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @field_validator("transport")
    @classmethod
    def _transport_name(cls, name: str) -> str:
        """A registered transport with a KV connector (`transport.registry.connectors()`) or auto, asked when the
        file is validated (a colocated cluster, without [prefill], needs none whatever this says)."""
        accepted = (*registry.connectors(), registry.AUTO)
        if name == "none":
            raise ValueError("'none' moves no KV; a cluster with prefill nodes needs a transport (a colocated "
                             "cluster, without [prefill], needs none)")
        if name not in accepted:
            raise ValueError(f"unknown transport {name!r}; known: {', '.join(accepted)}")
        return name

    @field_validator("hosts")
    @classmethod
    def _host_names(cls, hosts: dict[str, HostSpec]) -> dict[str, HostSpec]:
        for name in hosts:
            if name == LOCAL or not re.match(_NAME, name):
                raise ValueError(f"{name!r} cannot name a host (letters, digits, '.', '_', '-'; not 'local')")
        return hosts

    @field_validator("token_file")
    @classmethod
    def _token_path(cls, path: str | None) -> str | None:
        if path is not None and not path.startswith(("/", "~")):
            raise ValueError(f"{path!r} must be absolute or start with ~ (it is read on every host)")
        return path

    @model_validator(mode="after")
    def _transport_fits(self) -> "ClusterSpec":
        if not self.prefill and self.router.baseline_port is not None:
            raise ValueError("router.baseline_port: a colocated cluster (no [prefill]) is its own baseline")
        for name, host in self.hosts.items():
            if self.prefill and self.transport != "tcp" and host.kv_bind_address != host.kv:
                raise ValueError(f"hosts.{name}.kv_bind: {host.kv_bind!r} differs from the KV address {host.kv!r}, "
                                 f"which needs transport = \"tcp\" (nixl binds the address it advertises"
                                 f"{'; auto may pick nixl' if self.transport == 'auto' else ''})")
        return self

    @model_validator(mode="after")
    def _kv_tier(self) -> "ClusterSpec":
        if self.kv_tier is not None and self.engine.kv_tier != "none":
            raise ValueError("kv_tier: the KV tier is given twice, as [kv_tier] and as engine.kv_tier; keep one")
        if self.tier is not None and not self.prefill:
            raise ValueError("kv_tier: a colocated cluster (no [prefill]) has no prefill nodes to share a tier")
        return self

    @property
    def tier(self) -> KvTierSpec | None:
        """The cluster's KV tier: [kv_tier], or the engine's kv_tier* settings; None without one."""
        return self.kv_tier or tier_from_engine(self.engine)

    @property
    def kv_tier_host(self) -> str | None:
        """Where `disagg up` runs the tier's Redis server (None: it runs none)."""
        tier = self.tier
        if tier is None or not tier.started_by_up:
            return None
        return tier.host or self.prefill[0].host

    @model_validator(mode="after")
    def _prefix_routing_needs_events(self) -> "ClusterSpec":
        if PrefixAware.name in (self.router.prefill_policy, self.router.decode_policy) and not self.engine.kv_events:
            raise ValueError(f"router: {PrefixAware.name} needs the nodes' KV events: set kv_events = true in [engine]")
        return self

    @model_validator(mode="after")
    def _hosts_and_ports(self) -> "ClusterSpec":
        owners = [(name, node.host, node.ports) for name, _, node in self.nodes()]
        owners.append(("router", self.router.host, self.router.ports))
        if self.kv_tier_host is not None:
            owners.append(("kv_tier", self.kv_tier_host, self.tier.ports))
        for owner, host, _ in owners:
            if host not in self.hosts and not (owner == "router" and host == LOCAL):
                raise ValueError(f"{owner}.host: {host!r} is not in [hosts] (known: {', '.join(sorted(self.hosts))})")
        used: dict[tuple[str, int], str] = {}
        for owner, host, ports in owners:
            for port in ports:
                other = used.setdefault((self.machine(host), port), owner)
                if other != owner or ports.count(port) > 1:
                    raise ValueError(f"{owner}: port {port} on host {host!r} is also used by {other}")
        return self

    def nodes(self) -> list[tuple[str, str, NodeSpec]]:
        """(component name, role, node) for every node, prefill nodes first."""
        return [(node_name(role, i, len(specs)), role, spec)
                for role, specs in (("prefill", self.prefill), ("decode", self.decode))
                for i, spec in enumerate(specs)]

    @property
    def mode(self) -> str:
        """The router's mode: `disagg` with prefill nodes, else `colocated`."""
        return "disagg" if self.prefill else "colocated"

    def machine(self, host: str) -> str:
        """Hosts marked `local` and the router's "local" are the same machine."""
        return LOCAL if host == LOCAL or self.hosts[host].local else host

    @property
    def cluster_run_dir(self) -> str:
        return self.run_dir or f"~/.cache/disagg/clusters/{self.name}"


def load(path: Path) -> ClusterSpec:
    """Read and validate a cluster file; ConfigError names the file, the field and the problem."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"cluster file {path} not found") from None
    except OSError as exc:
        raise ConfigError(f"cluster file {path}: cannot read it: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return validate(data, f"{path}: ")


def validate(data: dict[str, Any], prefix: str) -> ClusterSpec:
    """A cluster spec from a cluster file's data; ConfigError `prefix field: problem; ...`, where a node's
    fields are named by the node (`decode.port`, `prefill-2.host`), however the file wrote it."""
    try:
        return ClusterSpec.model_validate(data)
    except ValidationError as exc:
        counts = {role: len(value) if isinstance(value, list) else 1
                  for role, value in data.items() if role in ROLES}
        errors = [{**error, "loc": _node_loc(error["loc"], counts)} for error in exc.errors()]
        raise describe_validation_error(SimpleNamespace(errors=lambda: errors), prefix) from None


def _node_loc(loc: tuple, counts: dict[str, int]) -> tuple:
    """("decode", 0, "port") -> ("decode", "port"); ("prefill", 1, "host") -> ("prefill-2", "host")."""
    if len(loc) >= 2 and loc[0] in counts and isinstance(loc[1], int):
        return (node_name(loc[0], loc[1], counts[loc[0]]), *loc[2:])
    return loc
