"""The cluster file: a TOML description of a two-node cluster (hosts, roles, ports, engine settings).

`load(path)` reads and validates it; every error names the file, the field and what is wrong, e.g.
`spark.toml: prefill.host: 'spark-03' is not in [hosts] (known: spark-01, spark-02)`. The schema:

    name = "spark-pair"                    # names the run folder on each host
    model = "~/models/Llama-3.1-8B-Instruct"   # a Hugging Face folder, at this path on both node hosts
    transport = "nixl"                     # nixl | tcp | auto
    token_file = "~/.config/disagg/cluster-token"   # the cluster token, at this path on every host (optional)
    [ssh]       user, port, identity_file, options = ["Key=Value", ...], connect_timeout_s
    [hosts.NAME] address (HTTP), kv_address (KV link; default: address), kv_bind (tcp: what the KV server
                binds; default: kv_address), ssh_address, ssh_user, ssh_port, local (run here, without ssh),
                disagg (its path there), env = {UCX_NET_DEVICES = "..."}
    [prefill]   host, port, info_port, kv_port, cpu_cores      (and [decode], the same)
    [router]    host ("local": the machine running `disagg up`), bind, port, baseline_port
    [engine]    max_model_len, dtype, prefix_caching, kv_buffer_device, kv_cache_gib, kv_lease_s,
                kv_transfer_timeout_s, vllm_args

See deploy/examples/ for complete files.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import ConfigError
from transport import registry

LOCAL = "local"  # the router's host when it runs on the machine that runs `disagg up`
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_address(value: str | None) -> str | None:
    if value is None:
        return value
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOSTNAME.match(value):
            raise ValueError(f"{value!r} is neither an IP address nor a host name") from None
    return value


class SshSettings(_Strict):
    """How to reach every host that is not `local` (a host may override user and port)."""

    user: str | None = None
    port: int = Field(default=22, ge=1, le=65535)
    identity_file: str | None = None
    options: tuple[str, ...] = ()  # ssh -o values, e.g. "StrictHostKeyChecking=accept-new"
    connect_timeout_s: float = Field(default=10.0, gt=0, le=300)

    @field_validator("options")
    @classmethod
    def _options_are_pairs(cls, options: tuple[str, ...]) -> tuple[str, ...]:
        for option in options:
            if not re.match(r"^[A-Za-z]+=\S+$", option):
                raise ValueError(f"{option!r} is not an ssh option of the form Key=Value")
        return options


class HostSpec(_Strict):
    """One machine. `address` is where HTTP goes (nodes bind it, the router calls it); `kv_address` is
    where the other node pulls KV from (often a direct link on another network)."""

    address: str
    kv_address: str | None = None
    kv_bind: str | None = None  # tcp: the KV block server's bind address (e.g. 0.0.0.0 behind NAT; default: kv)
    ssh_address: str | None = None
    ssh_user: str | None = None
    ssh_port: int | None = Field(default=None, ge=1, le=65535)
    local: bool = False
    disagg: str | None = None  # the disagg executable there (default: the same path as on this machine)
    env: dict[str, str] = Field(default_factory=dict)  # for the vLLM servers there (UCX_NET_DEVICES, ...)

    _addresses = field_validator("address", "kv_address", "kv_bind", "ssh_address")(_check_address)

    @field_validator("env")
    @classmethod
    def _env_keys(cls, env: dict[str, str]) -> dict[str, str]:
        for key in env:
            if not _ENV_KEY.match(key):
                raise ValueError(f"{key!r} is not an environment variable name")
        return env

    @property
    def kv(self) -> str:
        return self.kv_address or self.address

    @property
    def kv_bind_address(self) -> str:
        """Where this host's KV endpoint listens (the tcp block server may bind another address)."""
        return self.kv_bind or self.kv


class NodeSpec(_Strict):
    host: str
    port: int = Field(ge=1, le=65535)
    info_port: int = Field(ge=1, le=65535)
    kv_port: int = Field(ge=1, le=65535)
    cpu_cores: str | None = Field(default=None, pattern=r"^\d+(-\d+)?(,\d+(-\d+)?)*$")

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.port, self.info_port, self.kv_port)


class PrefillSpec(NodeSpec):
    port: int = Field(default=8100, ge=1, le=65535)
    info_port: int = Field(default=8101, ge=1, le=65535)
    kv_port: int = Field(default=5601, ge=1, le=65535)


class DecodeSpec(NodeSpec):
    port: int = Field(default=8200, ge=1, le=65535)
    info_port: int = Field(default=8201, ge=1, le=65535)
    kv_port: int = Field(default=5602, ge=1, le=65535)


class RouterSpec(_Strict):
    host: str = LOCAL
    bind: str | None = None  # default: the host's address (127.0.0.1 for local)
    port: int = Field(default=8000, ge=1, le=65535)
    baseline_port: int | None = Field(default=None, ge=1, le=65535)  # a colocated router on the decode node

    _bind = field_validator("bind")(_check_address)

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.port,) if self.baseline_port is None else (self.port, self.baseline_port)


class EngineSpec(_Strict):
    """Settings passed to vLLM on both nodes."""

    max_model_len: int = Field(default=2048, ge=16)
    dtype: str | None = None  # default: float32 on CPU hosts, auto on GPUs
    prefix_caching: bool = True
    kv_buffer_device: Literal["auto", "cpu", "cuda"] = "auto"
    kv_cache_gib: int = Field(default=1, ge=1)
    kv_lease_s: float = Field(default=30.0, ge=1, le=3600)
    kv_transfer_timeout_s: float = Field(default=30.0, ge=0.1, le=3600)  # tcp: one pull, before recompute
    vllm_args: tuple[str, ...] = ()


class ClusterSpec(_Strict):
    name: str = Field(pattern=_NAME)
    model: str = Field(min_length=1)
    served_model_name: str | None = None
    transport: str = "nixl"  # a registered transport with a KV connector, or auto (`_transport_name`)
    run_dir: str | None = None  # pids and logs on each host (default: ~/.cache/disagg/clusters/NAME)
    token_file: str | None = None  # the cluster token, at this path on every host (none: nodes are open)
    ready_timeout_s: float = Field(default=900.0, gt=0)
    ssh: SshSettings = SshSettings()
    hosts: dict[str, HostSpec] = Field(min_length=1)
    prefill: PrefillSpec
    decode: DecodeSpec
    router: RouterSpec = RouterSpec()
    engine: EngineSpec = EngineSpec()

    @field_validator("transport")
    @classmethod
    def _transport_name(cls, name: str) -> str:
        """One of `transport.registry.connectors()` or auto, asked when the file is validated."""
        accepted = (*registry.connectors(), registry.AUTO)
        if name not in accepted:
            quoted = [repr(choice) for choice in accepted]
            raise ValueError(f"Input should be {', '.join(quoted[:-1])} or {quoted[-1]}")
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
    def _kv_bind_needs_tcp(self) -> "ClusterSpec":
        for name, host in self.hosts.items():
            if self.transport != "tcp" and host.kv_bind_address != host.kv:
                raise ValueError(f"hosts.{name}.kv_bind: {host.kv_bind!r} differs from the KV address {host.kv!r}, "
                                 f"which needs transport = \"tcp\" (nixl binds the address it advertises"
                                 f"{'; auto may pick nixl' if self.transport == 'auto' else ''})")
        return self

    @model_validator(mode="after")
    def _roles_and_ports(self) -> "ClusterSpec":
        for role in ("prefill", "decode", "router"):
            host = getattr(self, role).host
            if host not in self.hosts and not (role == "router" and host == LOCAL):
                known = ", ".join(sorted(self.hosts))
                raise ValueError(f"{role}.host: {host!r} is not in [hosts] (known: {known})")
        used: dict[tuple[str, int], str] = {}
        for role, ports in (("prefill", self.prefill.ports), ("decode", self.decode.ports),
                            ("router", self.router.ports)):
            host = getattr(self, role).host
            for port in ports:
                other = used.setdefault((self.machine(host), port), role)
                if other != role or ports.count(port) > 1:
                    raise ValueError(f"{role}: port {port} on host {host!r} is also used by {other}")
        return self

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
    try:
        return ClusterSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: " + "; ".join(_describe(err) for err in exc.errors())) from None


def _describe(error: dict) -> str:
    """One pydantic error as `field.path: what is wrong`."""
    loc = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown field (a typo?)"
    elif error["type"] == "missing":
        message = "required field is missing"
    return f"{loc}: {message}" if loc else message
