"""How busy each node is: its vLLM metrics, scraped at a bounded interval, kept current between scrapes by the
router's own count of calls in flight to it; and the `load_aware` routing policy that reads it.

Per node (`NodeLoad`, one on every `router.registry.Node`):

- scraped from the node's vLLM server `GET /metrics` every `load_interval_s` (`LoadMonitor`):
  `vllm:num_requests_waiting`, `vllm:num_requests_running`, `vllm:kv_cache_usage_perc` (a fraction, 0..1,
  despite its name), summed over label sets; between two scrapes, the prefill compute rate the node showed
  (Δ`vllm:request_prefill_kv_computed_tokens_sum` / Δ`vllm:request_prefill_time_seconds_sum`, tokens per
  second of prefill) and, on a decode node, the KV pull rate (Δbytes / Δseconds of its transport's transfer
  metrics, `transport.base.Transport.metric_names`);
- counted by the router: calls in flight to the node (`begin()` ... the returned `end()`), and their estimated
  prompt tokens.

`outstanding` = requests the node has (waiting + running) as last scraped, plus the router's calls started
since minus those finished since, never fewer than the router's own calls in flight. A node whose metrics
cannot be read (a stub, a network error) counts the router's calls alone.

`LoadAware` (registered as `load_aware`) picks the candidate with the least `score` = outstanding + KV
usage (so KV usage breaks ties between equally busy nodes and a node near a full cache looks one request
busier); ties go to each candidate in turn.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from core.errors import ConfigError
from router.policies import RoutingPolicy, RoutingRequest, register
from transport import registry as transports

if TYPE_CHECKING:
    from router.registry import Node

log = logging.getLogger(__name__)
WAITING, RUNNING, KV_USAGE = "vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"
PREFILL_TOKENS = "vllm:request_prefill_kv_computed_tokens_sum"
PREFILL_TIME_S = "vllm:request_prefill_time_seconds_sum"
RATE_WEIGHT = 0.3  # weight of a new observation in the exponentially weighted rates
SCRAPE_TIMEOUT_S = 2.0


@dataclass
class NodeLoad:
    """One node's load as the router knows it (see the module docstring). Mutated by the router's calls
    (`begin`) and by `LoadMonitor` (`scraped`)."""

    in_flight: int = 0  # the router's calls to the node not finished yet
    in_flight_tokens: int = 0  # their estimated prompt tokens
    waiting: float = 0.0  # last scrape
    running: float = 0.0
    kv_usage: float = 0.0  # fraction of the node's KV cache in use, 0..1
    in_flight_at_scrape: int = 0
    scraped_s: float | None = None  # monotonic time of the last good scrape; None: never
    prefill_tokens_per_s: float | None = None  # measured prefill compute rate (EWMA)
    pull_bytes_per_s: float | None = None  # decode node: measured KV pull rate (EWMA)
    _counters: dict[str, float] = field(default_factory=dict, repr=False)

    def begin(self, prompt_tokens: int = 0) -> Callable[[], None]:
        """Count one call in flight (with its estimated prompt tokens); returns the call's `end`, which
        may be called more than once."""
        self.in_flight += 1
        self.in_flight_tokens += prompt_tokens
        ended = False

        def end() -> None:
            nonlocal ended
            if not ended:
                ended = True
                self.in_flight -= 1
                self.in_flight_tokens -= prompt_tokens

        return end

    @property
    def outstanding(self) -> float:
        """Requests the node has now: scraped waiting + running, corrected by the router's calls since."""
        if self.scraped_s is None:
            return float(self.in_flight)
        return max(float(self.in_flight), self.waiting + self.running + self.in_flight - self.in_flight_at_scrape)

    def score(self) -> float:
        """What `load_aware` minimizes: outstanding requests + KV cache usage (0..1)."""
        return self.outstanding + self.kv_usage

    def describe(self) -> dict[str, float | int | None]:
        """What /health shows of it."""
        return {"outstanding": self.outstanding, "in_flight": self.in_flight, "waiting": self.waiting,
                "running": self.running, "kv_usage": self.kv_usage, "scraped": self.scraped_s is not None,
                "prefill_tokens_per_s": self.prefill_tokens_per_s, "pull_bytes_per_s": self.pull_bytes_per_s}

    def scraped(self, values: dict[str, float], now_s: float, transfer: tuple[str, str] | None = None) -> None:
        """Take one scrape (`parse`'s sums); `transfer`: the (seconds sum, bytes) metric names of the
        node's KV transport, for its pull rate."""
        self.waiting, self.running = values.get(WAITING, 0.0), values.get(RUNNING, 0.0)
        self.kv_usage = values.get(KV_USAGE, 0.0)
        self.in_flight_at_scrape, self.scraped_s = self.in_flight, now_s
        self.prefill_tokens_per_s = self._rate(values, PREFILL_TOKENS, PREFILL_TIME_S, self.prefill_tokens_per_s)
        if transfer is not None:
            self.pull_bytes_per_s = self._rate(values, transfer[1], transfer[0], self.pull_bytes_per_s)

    def _rate(self, values: dict[str, float], amount: str, seconds: str, old: float | None) -> float | None:
        """Δamount / Δseconds since the last scrape, folded into `old` (EWMA); `old` when nothing moved."""
        if amount not in values or seconds not in values:
            return old
        d_amount = values[amount] - self._counters.get(amount, values[amount])
        d_seconds = values[seconds] - self._counters.get(seconds, values[seconds])
        self._counters[amount], self._counters[seconds] = values[amount], values[seconds]
        if d_amount <= 0 or d_seconds <= 0:
            return old
        new = d_amount / d_seconds
        return new if old is None else (1 - RATE_WEIGHT) * old + RATE_WEIGHT * new


def parse(text: str, names: Iterable[str]) -> dict[str, float]:
    """{sample name: value summed over its label sets} for the samples named in `names`, from Prometheus
    text (lines of other metrics are skipped before parsing: vLLM's page is large)."""
    wanted = set(names)
    lines = [line for line in text.splitlines() if line.split("{", 1)[0].split(" ", 1)[0] in wanted]
    values: dict[str, float] = {}
    for family in text_string_to_metric_families("\n".join(lines) + "\n"):
        for sample in family.samples:
            if sample.name in wanted:
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


class LoadMonitor:
    """Scrapes every healthy node's vLLM `/metrics` each `interval_s` into its `NodeLoad`."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes

    async def run(self, client: httpx.AsyncClient, interval_s: float) -> None:
        while True:
            await self.scrape_all(client)
            await asyncio.sleep(interval_s)

    async def scrape_all(self, client: httpx.AsyncClient) -> None:
        await asyncio.gather(*(self.scrape(client, node) for node in self.nodes if node.healthy))

    async def scrape(self, client: httpx.AsyncClient, node: Node) -> None:
        transfer = _transfer_names(node)
        names = [WAITING, RUNNING, KV_USAGE, PREFILL_TOKENS, PREFILL_TIME_S, *(transfer or ())]
        try:
            resp = await client.get(f"{node.vllm_url}/metrics", timeout=SCRAPE_TIMEOUT_S)
            resp.raise_for_status()
            values = parse(resp.text, names)
        except (httpx.HTTPError, ValueError) as exc:
            log.debug("load of %s not scraped: %s", node.url, exc)
            return
        node.load.scraped(values, time.monotonic(), transfer)


def _transfer_names(node: Node) -> tuple[str, str] | None:
    """(seconds sum, bytes) of a decode node's KV transport metrics, when it names a transport that has them."""
    if node.role != "decode" or node.info is None:
        return None
    try:
        names = transports.get(node.info.transport).metric_names
    except ConfigError:  # a transport this router does not know: no pull rate
        return None
    return None if names is None else (names.time_sum, names.bytes_sum)


class LoadAware(RoutingPolicy):
    """The candidate with the least outstanding work (`NodeLoad.score`); ties in turn."""

    name = "load_aware"

    def __init__(self) -> None:
        self._counter = itertools.count()

    def pick(self, candidates: list[Node], request: RoutingRequest) -> Node:
        start = next(self._counter) % len(candidates)
        rotated = candidates[start:] + candidates[:start]
        return min(rotated, key=lambda node: node.load.score())


register(LoadAware)
