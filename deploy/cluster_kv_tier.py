"""A cluster's KV tier (a cluster file's `[kv_tier]`, `up --local --kv-tier`): its spec, the Redis server
`disagg up` runs for it, and the tier settings every prefill node gets.

A redis tier without `url` is served by a `kv-tier` component (`disagg kv-tier`, deploy/kv_tier_server.py)
on the tier host, started before the nodes, bound to that host's address (127.0.0.1 for `up --local`),
with the memory cap and, when the cluster has a token file, the token as Redis's password; the prefill nodes
get its URL and authenticate with the token. A redis tier with `url` is a server of your own, and a disk tier
a directory (each prefill host's, or a shared one at the same path): nothing is started for those. Decode
nodes never get the tier.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from deploy.host_spec import Strict
from node.settings import EngineSettings


class KvTierSpec(Strict):
    """`[kv_tier]` (deploy/cluster_file.py). Defaults: `host` the first prefill node's, ports 6390/6391."""

    backend: Literal["redis", "disk"]
    url: str | None = None
    path: str | None = None
    ttl_s: float = Field(default=3600.0, gt=0)
    max_bytes: int = Field(default=2**30, ge=2**20)
    host: str | None = None
    port: int = Field(default=6390, ge=1, le=65535)
    health_port: int = Field(default=6391, ge=1, le=65535)

    @model_validator(mode="after")
    def _where(self) -> "KvTierSpec":
        if self.backend == "disk" and (self.url or self.host):
            raise ValueError("a disk tier takes path, not url or host")
        if self.backend == "redis" and self.path:
            raise ValueError("a redis tier takes url (or none: disagg up starts one), not path")
        if self.url and self.host:
            raise ValueError("url names a Redis of your own; host is where disagg up starts one: give one of them")
        if self.port == self.health_port:
            raise ValueError("port and health_port must differ")
        return self

    @property
    def started_by_up(self) -> bool:
        """Whether `disagg up` runs the Redis server (`disagg kv-tier`)."""
        return self.backend == "redis" and self.url is None

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.port, self.health_port) if self.started_by_up else ()


def tier_from_engine(engine: EngineSettings) -> KvTierSpec | None:
    """The tier the engine's kv_tier* settings describe (the other spelling of `[kv_tier]`), None without one."""
    if engine.kv_tier == "none":
        return None
    where = {"url": engine.kv_tier_url} if engine.kv_tier == "redis" else {"path": engine.kv_tier_path}
    return KvTierSpec(backend=engine.kv_tier, ttl_s=engine.kv_tier_ttl_s, max_bytes=engine.kv_tier_max_bytes, **where)


def node_engine(engine: EngineSettings, tier: KvTierSpec | None, redis_url: str | None,
                token_auth: bool) -> EngineSettings:
    """A prefill node's engine settings with the cluster's tier (`redis_url`: the server `up` starts, which
    wants the cluster token when `token_auth`)."""
    if tier is None:
        return engine
    values = {"kv_tier": tier.backend, "kv_tier_ttl_s": tier.ttl_s, "kv_tier_max_bytes": tier.max_bytes}
    if tier.backend == "disk":
        values["kv_tier_path"] = tier.path
    else:
        values["kv_tier_url"] = tier.url or redis_url
        by_token = engine.kv_tier_auth == "cluster-token" or (tier.started_by_up and token_auth)
        values["kv_tier_auth"] = "cluster-token" if by_token else "none"
    return EngineSettings(**{**engine.model_dump(), **{k: v for k, v in values.items() if v is not None}})
