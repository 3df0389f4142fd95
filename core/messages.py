"""Typed messages that cross a process boundary, defined once and imported by both sides.

`NodeInfo` is what a node supervisor (prefill_node / decode_node) serves on `GET /info` and what the
router reads to learn where the node's vLLM server listens and what one token of KV costs.
`RequestTiming` is the per-request breakdown the router logs and exports.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["prefill", "decode"]


class NodeInfo(BaseModel):
    """Facts about one node, served by its supervisor at `GET /info`."""

    model_config = ConfigDict(frozen=True)

    role: Role
    vllm_url: str
    model_path: str
    served_model_name: str
    transport: str
    transport_reason: str
    kv_host: str
    kv_port: int  # NIXL side channel or our TCP block server
    kv_bytes_per_token: int
    block_size_tokens: int | None = None
    kv_role: str
    engine_ready: bool
    pid: int | None = None


class RequestTiming(BaseModel):
    """Where one request's time went, as the router saw it (seconds and bytes)."""

    request_id: str
    mode: Literal["disagg", "colocated"]
    endpoint: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    queue_s: float = 0.0
    prefill_s: float | None = None  # the prefill node's answer (the slowest part's)
    ttft_s: float | None = None  # arrival to the first token's chunk leaving the router (streams)
    decode_ttft_s: float | None = None  # the decode node's call to its first chunk: KV pull + first decode step
    decode_first_s: float | None = None  # arrival to the decode node's first chunk at the router (streams)
    decode_s: float | None = None  # the first decode call sent to the last answer or chunk (all parts)
    total_s: float | None = None
    kv_bytes: int | None = None
    decision: str | None = None  # disagg mode: remote or local prefill (router.decider)
    decision_reason: str | None = None
    decision_local_cost_s: float | None = None  # the cost model's two sides, for a conditional decision
    decision_remote_cost_s: float | None = None
    status: str = "running"
    # monotonic clock of this process when the request arrived; not part of any message
    started_s: float = Field(default_factory=time.monotonic, exclude=True)
    decode_sent_s: float | None = Field(default=None, exclude=True)  # monotonic: the first decode call sent

    def server_timing(self) -> str:
        """The W3C Server-Timing header value for what is known when headers go out."""
        parts = [f"queue;dur={self.queue_s * 1000:.1f}"]
        if self.prefill_s is not None:
            parts.append(f"prefill;dur={self.prefill_s * 1000:.1f}")
        if self.decode_ttft_s is not None:
            parts.append(f"decode_first;dur={self.decode_ttft_s * 1000:.1f}")
        if self.kv_bytes is not None:
            parts.append(f'kv;desc="{self.kv_bytes} bytes"')
        return ", ".join(parts)
