"""Conditional disaggregation: per request, prefill on a prefill node (remote) or on the decode node (local).

Policies (`--disagg-policy`): `always` (every request remote; the default, as before this existed), `never`
(every request local: a decode node serves it as colocated serving would, no prefill leg), `conditional`
(the cost model below). Every decision and its reason is counted in
`disagg_router_decisions_total{decision, reason}` and written to the request's `RequestTiming`.

The cost model (seconds; on equal hardware the prefill compute itself costs the same either side, so it
weighs only what differs):

    P        prompt tokens, estimated (`estimate_prompt_tokens`: token ids counted, text as characters / 4)
    r        prefill rate, tokens/s: measured on the prefill nodes (router.load; mean over those with a
             measurement), else `prefill_tokens_per_s`
    t = P / r                        prefill compute
    x = P * kv_bytes_per_token / B   KV transfer; B from `kv_link_gbit_per_s` if set, else measured on the
                                     decode nodes' pulls (router.load), else DEFAULT_LINK_GBIT_PER_S;
                                     kv_bytes_per_token from the prefill node's /info (0 if unknown)
    q = queued tokens / r            wait on the least busy healthy prefill node: the router's prompt tokens
                                     in flight there, plus requests the node reports beyond the router's, at
                                     the mean prompt length seen
    n                                outstanding requests on the least busy healthy decode node (router.load)
    a                                request arrival rate, per second, over the last ARRIVAL_WINDOW_S
    local cost  = t * (n + a * t / 2)   a local prefill stalls every stream on the decode node for about t
                                        (vLLM batches it with their decode steps), and those that arrive
                                        meanwhile for t/2 on average
    remote cost = q + x + h             what remote adds for this request: the wait, the transfer, and the
                                        fixed cost of a second node call `h` (`remote_overhead_s`)

Remote when remote cost < local cost (reason `remote_cheaper`), else local (`local_cheaper`); local when the
prefill wait q exceeds `max_prefill_wait_s` (`prefill_queue_full`) or no prefill node is healthy
(`no_prefill_node`). Forced decisions have reason `forced`; shapes the P/D protocol cannot carry (beam
search) are local with reason `request_shape`.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

from core.errors import ConfigError
from core.messages import RequestTiming
from router.registry import Node, NodeRegistry

log = logging.getLogger("router.requests")
DisaggPolicy = Literal["always", "never", "conditional"]
DISAGG_POLICIES: tuple[str, ...] = ("always", "never", "conditional")
DEFAULT_LINK_GBIT_PER_S = 8.0  # when neither configured nor measured yet (1 GB/s)
ARRIVAL_WINDOW_S = 30.0
MESSAGE_OVERHEAD_TOKENS = 4  # chat template tokens per message (role markers)


@dataclass(frozen=True)
class DeciderSettings:
    """The decider's part of the router's settings (see the module docstring for each term)."""

    policy: DisaggPolicy = "always"
    prefill_tokens_per_s: float = 250.0  # until the prefill nodes' own rate is measured
    kv_link_gbit_per_s: float | None = None  # None: measured from the decode nodes' pulls
    remote_overhead_s: float = 0.1
    max_prefill_wait_s: float = 10.0
    chars_per_token: float = 4.0

    def __post_init__(self) -> None:
        if self.policy not in DISAGG_POLICIES:
            raise ConfigError(f"disagg policy must be one of {', '.join(DISAGG_POLICIES)}, not {self.policy!r}")
        for name in ("prefill_tokens_per_s", "chars_per_token"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0")
        if self.kv_link_gbit_per_s is not None and not self.kv_link_gbit_per_s > 0:
            raise ConfigError("kv_link_gbit_per_s must be > 0")
        if self.remote_overhead_s < 0 or self.max_prefill_wait_s < 0:
            raise ConfigError("remote_overhead_s and max_prefill_wait_s must be >= 0")


@dataclass(frozen=True)
class CostInputs:
    """What one conditional decision weighs (module docstring); `prefill_wait_s` None: no prefill node."""

    prompt_tokens: int
    prefill_tokens_per_s: float
    kv_bytes_per_token: int
    link_bytes_per_s: float
    prefill_wait_s: float | None
    decode_outstanding: float
    arrivals_per_s: float


@dataclass(frozen=True)
class Decision:
    remote: bool
    reason: str
    local_cost_s: float | None = None
    remote_cost_s: float | None = None

    @property
    def label(self) -> str:
        return "remote" if self.remote else "local"


def weigh(inputs: CostInputs, settings: DeciderSettings) -> Decision:
    """The conditional decision for `inputs` (pure: the cost model of the module docstring)."""
    if inputs.prefill_wait_s is None:
        return Decision(False, "no_prefill_node")
    t_s = inputs.prompt_tokens / inputs.prefill_tokens_per_s
    local_s = t_s * (inputs.decode_outstanding + inputs.arrivals_per_s * t_s / 2)
    transfer_s = inputs.prompt_tokens * inputs.kv_bytes_per_token / inputs.link_bytes_per_s
    remote_s = inputs.prefill_wait_s + transfer_s + settings.remote_overhead_s
    if inputs.prefill_wait_s > settings.max_prefill_wait_s:
        return Decision(False, "prefill_queue_full", local_s, remote_s)
    if remote_s < local_s:
        return Decision(True, "remote_cheaper", local_s, remote_s)
    return Decision(False, "local_cheaper", local_s, remote_s)


def estimate_prompt_tokens(body: dict[str, Any], chars_per_token: float = 4.0) -> int:
    """The request's prompt tokens, estimated without a tokenizer: token ids counted, text as its characters
    / `chars_per_token`, chat messages plus MESSAGE_OVERHEAD_TOKENS each; every prompt of a batch summed."""
    if isinstance(body.get("messages"), list):
        return sum(_text_tokens(_content_text(m), chars_per_token) + MESSAGE_OVERHEAD_TOKENS
                   for m in body["messages"] if isinstance(m, dict))
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    prompts = prompt if isinstance(prompt, list) else [prompt]
    return sum(len(p) if isinstance(p, list) else _text_tokens(p, chars_per_token) for p in prompts)


def _content_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def _text_tokens(text: Any, chars_per_token: float) -> int:
    return int(len(text) / chars_per_token) + 1 if isinstance(text, str) else 0


class Decider:
    """Decides each disaggregated request (`decide`), from the registry's nodes and their load."""

    def __init__(self, settings: DeciderSettings, registry: NodeRegistry, decisions: Any) -> None:
        self.settings, self.registry, self.decisions = settings, registry, decisions  # decisions: a Counter
        self._arrivals_s: collections.deque[float] = collections.deque(maxlen=10_000)
        self._prompt_tokens_seen = (0, 0)  # (sum, count), for the mean prompt length

    def decide(self, body: dict[str, Any], timing: RequestTiming, shape_reason: str | None = None) -> Decision:
        """Remote or local for one client request; counted and written to `timing`."""
        now_s = time.monotonic()
        self._arrivals_s.append(now_s)
        if shape_reason is not None:
            decision = Decision(False, "request_shape")
        elif self.settings.policy != "conditional":
            decision = Decision(self.settings.policy == "always", "forced")
        else:
            decision = weigh(self.inputs(estimate_prompt_tokens(body, self.settings.chars_per_token), now_s),
                             self.settings)
        self.decisions.labels(decision.label, decision.reason).inc()
        timing.decision, timing.decision_reason = decision.label, decision.reason
        timing.decision_local_cost_s, timing.decision_remote_cost_s = decision.local_cost_s, decision.remote_cost_s
        return decision

    def inputs(self, prompt_tokens: int, now_s: float) -> CostInputs:
        """The cost model's inputs for a prompt of `prompt_tokens`, from the nodes as they are now."""
        total, count = self._prompt_tokens_seen
        self._prompt_tokens_seen = (total + prompt_tokens, count + 1)
        mean_tokens = (total + prompt_tokens) / (count + 1)
        prefills = [n for n in self.registry.nodes if n.role == "prefill" and n.healthy]
        decodes = [n for n in self.registry.nodes if n.role == "decode" and n.healthy]
        rate = self._prefill_rate(prefills)
        waits = [_queued_tokens(n, mean_tokens) / rate for n in prefills]
        return CostInputs(
            prompt_tokens=prompt_tokens, prefill_tokens_per_s=rate,
            kv_bytes_per_token=next((n.info.kv_bytes_per_token for n in prefills if n.info), 0),
            link_bytes_per_s=self._link_bytes_per_s(decodes), prefill_wait_s=min(waits) if waits else None,
            decode_outstanding=min((n.load.outstanding for n in decodes), default=0.0),
            arrivals_per_s=self._arrival_rate(now_s))

    def _prefill_rate(self, prefills: list[Node]) -> float:
        measured = [n.load.prefill_tokens_per_s for n in prefills if n.load.prefill_tokens_per_s]
        return sum(measured) / len(measured) if measured else self.settings.prefill_tokens_per_s

    def _link_bytes_per_s(self, decodes: list[Node]) -> float:
        if self.settings.kv_link_gbit_per_s is not None:
            return self.settings.kv_link_gbit_per_s * 1e9 / 8
        measured = [n.load.pull_bytes_per_s for n in decodes if n.load.pull_bytes_per_s]
        return sum(measured) / len(measured) if measured else DEFAULT_LINK_GBIT_PER_S * 1e9 / 8

    def _arrival_rate(self, now_s: float) -> float:
        while self._arrivals_s and self._arrivals_s[0] < now_s - ARRIVAL_WINDOW_S:
            self._arrivals_s.popleft()
        return len(self._arrivals_s) / ARRIVAL_WINDOW_S


def _queued_tokens(node: Node, mean_tokens: float) -> float:
    """Prompt tokens waiting for the node: the router's in flight there, plus requests the node reports beyond
    the router's own (another client's), at the mean prompt length."""
    others = max(0.0, node.load.outstanding - node.load.in_flight)
    return node.load.in_flight_tokens + others * mean_tokens
