"""The router's settings: one frozen dataclass, validated when built."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlparse

from core.errors import ConfigError
from router import load as _registers_load_aware  # noqa: F401
from router import policies
from router.decider import DeciderSettings

Mode = Literal["disagg", "colocated"]
PREFIX_MAX_BLOCKS_PER_NODE = 262_144  # ~25 MB of prefix index per node; 8x the blocks of an 80 GB GPU's cache


@dataclass(frozen=True)
class PrefixSettings:
    """The prefix_aware policy's settings (router.prefix_routing, router.prefix_policy).

    `tokenizer`: a local model folder with tokenizer.json (None: fetched from a node supervisor);
    `load_weight`: how much one request in flight on a node weighs, in typical requests' prefill work (0:
    load is ignored); `max_blocks_per_node`: the bound of the prefix index per node (router.prefix_index).
    """

    tokenizer: str | None = None
    load_weight: float = 1.0
    max_blocks_per_node: int = PREFIX_MAX_BLOCKS_PER_NODE

    def __post_init__(self) -> None:
        if not self.load_weight >= 0:
            raise ConfigError("the prefix load weight must be >= 0")
        if self.max_blocks_per_node < 1:
            raise ConfigError("the prefix index needs room for at least one block per node")


@dataclass(frozen=True)
class RouterConfig:
    """Everything `disagg router` needs.

    `prefill_urls` / `decode_urls` name either a disagg node supervisor (which serves `GET /info`) or a
    plain vLLM OpenAI server started by hand; the router finds out which on its first health check.
    In `colocated` mode only `decode_urls` are used: each request goes to one server, which prefills
    and decodes itself (the single-node baseline).

    Limits: `api_key` (None: no key needed) guards every /v1 route; at most `max_inflight` requests
    are served at once and `max_queue` more wait (beyond that: 429); each request has
    `request_timeout_s` from arrival to its last byte (else 504); bodies over `max_body_bytes` get 413.
    `colocated_fallback`: when no prefill node can serve, the decode node prefills itself.
    `cluster_token`: the nodes' shared secret, sent as a bearer credential with every call to a node.
    `prefill_policy` / `decode_policy`: a routing policy of router.policies per role (round_robin,
    load_aware, prefix_aware, ...); `prefix`: the prefix_aware policy's settings; `load_interval_s`: how
    often the nodes' vLLM metrics are scraped when a policy or the decider needs them (router.load);
    `decider`: conditional disaggregation (router.decider).
    """

    mode: Mode
    decode_urls: tuple[str, ...]
    prefill_urls: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8000
    request_timeout_s: float = 600.0
    connect_timeout_s: float = 5.0
    health_interval_s: float = 2.0
    max_body_bytes: int = 4 * 1024 * 1024
    max_inflight: int = 256
    max_queue: int = 512
    colocated_fallback: bool = True
    api_key: str | None = field(default=None, repr=False)
    cluster_token: str | None = field(default=None, repr=False)  # sent to every node (core.cluster_token)
    prefill_policy: str = "round_robin"
    decode_policy: str = "round_robin"
    load_interval_s: float = 1.0
    decider: DeciderSettings = field(default_factory=DeciderSettings)
    prefix: PrefixSettings = field(default_factory=PrefixSettings)

    @property
    def policy_names(self) -> dict[str, str]:
        """The routing policy of each role."""
        return {"prefill": self.prefill_policy, "decode": self.decode_policy}

    def __post_init__(self) -> None:
        if self.mode not in ("disagg", "colocated"):
            raise ConfigError(f"mode must be 'disagg' or 'colocated', not {self.mode!r}")
        if not self.decode_urls:
            raise ConfigError("at least one --decode URL is needed")
        if self.mode == "disagg" and not self.prefill_urls:
            raise ConfigError("disagg mode needs at least one --prefill URL")
        for url in (*self.prefill_urls, *self.decode_urls):
            parsed = urlparse(url)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise ConfigError(f"node URL {url!r} must look like http://HOST:PORT")
        if not 0 < self.port < 65536:
            raise ConfigError(f"port {self.port} out of range")
        for role, name in self.policy_names.items():
            if name not in policies.names():
                raise ConfigError(f"--{role}-policy {name!r}: known policies: {', '.join(policies.names())}")
        for name in ("request_timeout_s", "connect_timeout_s", "health_interval_s", "load_interval_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0")
        if self.max_body_bytes < 1024:
            raise ConfigError("max_body_bytes must be at least 1024")
        if self.max_inflight < 1 or self.max_queue < 0:
            raise ConfigError("max_inflight must be >= 1 and max_queue >= 0")
        if self.api_key is not None and (not self.api_key or not self.api_key.isascii()
                                         or not self.api_key.isprintable() or " " in self.api_key):
            raise ConfigError("api_key must be non-empty printable ASCII without spaces")

    @property
    def needs_load(self) -> bool:
        """Whether node load is scraped: a load-aware policy or the conditional decider reads it."""
        return "load_aware" in (self.prefill_policy, self.decode_policy) or self.decider.policy == "conditional"
