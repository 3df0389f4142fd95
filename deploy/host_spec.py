"""A cluster file's machines: `[ssh]` (how to reach the hosts that are not local) and `[hosts.NAME]` (each
machine's addresses, ssh overrides and environment), validated as `deploy.cluster_file` reads the file."""

from __future__ import annotations

import ipaddress
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from node.settings import check_env_keys

_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$")


class Strict(BaseModel):
    """A cluster file table: unknown fields are errors, the parsed value is frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def check_address(value: str | None) -> str | None:
    """`value` as given when it is an IP address or a host name (RFC 1123 labels); else ValueError."""
    if value is None:
        return value
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOSTNAME.match(value):
            raise ValueError(f"{value!r} is neither an IP address nor a host name") from None
    return value


class SshSettings(Strict):
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


class HostSpec(Strict):
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

    _addresses = field_validator("address", "kv_address", "kv_bind", "ssh_address")(check_address)

    _env_keys = field_validator("env")(check_env_keys)

    @property
    def kv(self) -> str:
        return self.kv_address or self.address

    @property
    def kv_bind_address(self) -> str:
        """Where this host's KV endpoint listens (the tcp block server may bind another address)."""
        return self.kv_bind or self.kv
