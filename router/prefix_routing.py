"""What prefix-aware routing needs besides the policy: the prefix index, the KV event subscriber that feeds
it, and the tokenizer, started and stopped with the router (router.app's lifespan).

Built only when a role's policy is `prefix_aware` (`PrefixRouting.create` returns None otherwise). Its
tokenizer comes from `PrefixSettings.tokenizer` (router.config) (a local model folder: read when the router starts, a
missing or broken one is a ConfigError), else from the first node supervisor that serves the model's
tokenizer files (`GET /tokenizer/NAME`), fetched in the background once nodes answer. Until one is known,
or when none is (plain vLLM nodes and no `--tokenizer`), prompts are placed without a prefix
(outcome `no_tokenizer`: round robin among equally loaded nodes), and a warning says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import httpx
from prometheus_client import CollectorRegistry

from core.errors import ConfigError
from router import tokenize, tokenizer_files
from router.config import PrefixSettings
from router.prefix_index import PrefixIndex
from router.prefix_metrics import PrefixMetrics

if TYPE_CHECKING:
    from router.kv_events import KvEventSubscriber
    from router.registry import NodeRegistry

log = logging.getLogger(__name__)
POLICY = "prefix_aware"


class PrefixRouting:
    def __init__(self, settings: PrefixSettings, registry: NodeRegistry, roles: tuple[str, ...],
                 metrics_registry: CollectorRegistry) -> None:
        self.settings, self.registry, self.roles = settings, registry, roles
        self.metrics = PrefixMetrics(metrics_registry)
        self.index = PrefixIndex(settings.max_blocks_per_node, on_clear=self._cleared)
        self.tokenizer: tokenize.PromptTokenizer | None = None
        self.subscriber: KvEventSubscriber | None = None
        self._tasks: list[asyncio.Task] = []
        if settings.tokenizer is not None:
            self.tokenizer = _tokenizer(tokenizer_files.from_folder(settings.tokenizer))

    def _cleared(self, node: str, reason: str) -> None:
        self.metrics.resets.labels(node, reason).inc()
        self.metrics.blocks.labels(node).set(0)

    @classmethod
    def create(cls, settings: PrefixSettings, policy_names: dict[str, str], registry: NodeRegistry,
               metrics_registry: CollectorRegistry) -> PrefixRouting | None:
        """The prefix machinery for the roles whose policy (`policy_names`, by role) is prefix_aware."""
        roles = tuple(role for role, name in policy_names.items() if name == POLICY)
        return cls(settings, registry, roles, metrics_registry) if roles else None

    def token_ids(self, endpoint: str, body: dict[str, Any]) -> tuple[list[int] | None, str | None]:
        """The prompt's token ids, or (None, why not)."""
        if self.tokenizer is None:
            given = tokenize.given_ids(body) if endpoint == "completions" else None
            return (given, None) if given is not None else (None, "no_tokenizer")
        ids = self.tokenizer.token_ids(endpoint, body)
        return (ids, None) if ids is not None else (None, "no_tokens")

    async def start(self, client: httpx.AsyncClient, interval_s: float) -> None:
        """Subscribe to the nodes' events (and fetch a tokenizer if none was given), in the background."""
        from router.kv_events import KvEventSubscriber  # pyzmq: only where prefix routing is on

        self.subscriber = KvEventSubscriber(self.registry, self.roles, self.index, self.metrics)
        self._tasks.append(asyncio.create_task(self.subscriber.run(client, interval_s)))
        if self.tokenizer is None:
            self._tasks.append(asyncio.create_task(self._fetch_tokenizer(client, interval_s)))

    async def _fetch_tokenizer(self, client: httpx.AsyncClient, interval_s: float) -> None:
        warned = False
        while self.tokenizer is None:
            for node in [n for n in self.registry.nodes if n.healthy and n.info is not None]:
                try:
                    files = await tokenizer_files.from_node(client, node.url)
                except (httpx.HTTPError, ConfigError) as exc:
                    log.warning("tokenizer files from %s: %s", node.url, exc)
                    continue
                if files is not None:
                    self.tokenizer = await asyncio.to_thread(_tokenizer, files)
                    log.info("prefix routing tokenizes with the files of %s", files.origin)
                    return
            if not warned and any(n.healthy for n in self.registry.nodes):
                log.warning("prefix routing has no tokenizer yet (no node serves one; give the router "
                            "--tokenizer MODEL_DIR): requests are placed by load, round robin")
                warned = True
            await asyncio.sleep(interval_s)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()


def _tokenizer(files: tokenizer_files.TokenizerFiles) -> tokenize.PromptTokenizer:
    try:
        return tokenize.PromptTokenizer(files)
    except Exception as exc:  # tokenizers raises its own exception types for a malformed file
        raise ConfigError(f"cannot build a tokenizer from {files.origin}: {exc}") from None
