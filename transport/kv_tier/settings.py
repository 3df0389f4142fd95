"""Settings of the KV tier, one typed object: what `node.launch` writes into the tier connector's
`kv_connector_extra_config` and what the connector reads back (both sides import this module; no vLLM here).

Fields (units in the names):

- `backend`: `redis` or `disk` (`transport.kv_tier.backend` has the registry).
- `url`: redis only, `redis://host:port/db`, required there.
- `path`: disk only, the directory (local, or shared by the prefill nodes), required there.
- `ttl_s` (3600): how long an entry lives: Redis `SET ... EX ttl_s`; disk: since it was last written or read.
- `max_bytes` (1 GiB): the tier's memory cap. Disk: the cap this backend holds itself (oldest entries are
  evicted). Redis: the server's `maxmemory` (with `allkeys-lru`), which whoever starts the server sets;
  the connector does not enforce it.
- `op_timeout_s` (2): worker side, one read or write of the tier (a 5.9 MB block of SmolLM2 fp32 takes
  about 8 ms over loopback Redis); past it the load fails and vLLM recomputes, or the store is dropped.
- `lookup_budget_s` (0.05): scheduler side, how long one request's lookup may block the scheduler loop.
- `breaker_cooldown_s` (5): after a failed tier operation, how long that side skips the tier (requests are
  computed; lookups count as misses) before trying it again.
- `max_pending_store_bytes` (256 MiB): worker side, blocks waiting for the background writer; beyond it the
  oldest waiting store is dropped (counted) so a slow or full tier never stalls the engine.
- `auth_with_cluster_token` (false): redis only, authenticate with the cluster token (`AUTH`), which the
  connector reads from the vLLM server's environment (`DISAGG_CLUSTER_TOKEN`), never from the command line:
  set by the launcher for a Redis server it starts itself with the token as its password.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

BACKENDS = ("redis", "disk")
GIB = 2**30
MIB = 2**20


class KvTierSettings(BaseModel):
    """One prefill node's KV tier; ValueError (pydantic's ValidationError) names what is wrong."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["redis", "disk"]
    url: str | None = None
    path: str | None = None
    ttl_s: float = Field(3600.0, gt=0)
    max_bytes: int = Field(GIB, ge=MIB)
    op_timeout_s: float = Field(2.0, gt=0, le=600)
    lookup_budget_s: float = Field(0.05, gt=0, le=10)
    breaker_cooldown_s: float = Field(5.0, ge=0, le=3600)
    max_pending_store_bytes: int = Field(256 * MIB, ge=0)
    auth_with_cluster_token: bool = False

    @model_validator(mode="after")
    def _where(self) -> "KvTierSettings":
        if self.backend == "redis":
            if not self.url or not self.url.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError(f"the redis KV tier needs url = redis://HOST:PORT/DB, not {self.url!r}")
            if self.path is not None:
                raise ValueError("path is for the disk KV tier; the redis tier takes url")
        else:
            if not self.path:
                raise ValueError("the disk KV tier needs path (a directory)")
            if self.url is not None:
                raise ValueError("url is for the redis KV tier; the disk tier takes path")
            if self.auth_with_cluster_token:
                raise ValueError("auth_with_cluster_token is for the redis KV tier")
        return self

    def to_extra_config(self) -> dict[str, Any]:
        """The connector's `kv_connector_extra_config` (JSON-able; only what differs from the defaults, plus
        the backend and where it is)."""
        return self.model_dump(exclude_defaults=True) | {"backend": self.backend}

    @classmethod
    def from_extra_config(cls, extra: Mapping[str, Any] | None) -> "KvTierSettings":
        """Read back `to_extra_config`; ValueError naming each bad key."""
        try:
            return cls.model_validate(dict(extra or {}))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"KV tier settings: {problems}") from None
