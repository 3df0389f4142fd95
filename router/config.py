"""The router's settings: one frozen dataclass, validated when built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlparse

from disagg.errors import ConfigError

Mode = Literal["disagg", "colocated"]


@dataclass(frozen=True)
class RouterConfig:
    """Everything `disagg router` needs.

    `prefill_urls` / `decode_urls` name either a disagg node supervisor (which serves `GET /info`) or a
    plain vLLM OpenAI server started by hand; the router finds out which on its first health check.
    In `colocated` mode only `decode_urls` are used: each request goes to one server, which prefills
    and decodes itself (the single-node baseline).
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
        for name in ("request_timeout_s", "connect_timeout_s", "health_interval_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0")
        if self.max_body_bytes < 1024:
            raise ConfigError("max_body_bytes must be at least 1024")
