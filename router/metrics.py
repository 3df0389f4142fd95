"""The router's Prometheus metrics, on a registry of its own (one per app, so tests can build several)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from core.messages import RequestTiming

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)
INTER_TOKEN_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
KV_BUCKETS_BYTES = tuple(2.0**p for p in range(16, 34, 2))  # 64 KiB .. 8 GiB


@dataclass
class RouterMetrics:
    """Every `disagg_router_*` series. `requests{status}` is `ok`, `error_<HTTP status>` (answered with
    an error), `stream_error` (failed after streaming began) or `client_disconnected`."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("disagg_router_requests", "Requests by endpoint, mode and outcome",
                                ["endpoint", "mode", "status"], registry=r)
        self.failures = Counter("disagg_router_failures", "Requests that failed, by reason (error code)",
                                ["reason"], registry=r)
        self.retries = Counter("disagg_router_retries", "Node calls retried on another node of the same "
                               "role before any output, by the failure's reason (prefill_* or decode_*)", ["reason"], registry=r)
        self.fallbacks = Counter("disagg_router_fallbacks", "Disagg requests served colocated on the decode "
                                 "node because no prefill node could serve, by reason", ["reason"], registry=r)
        self.ttft_s = Histogram("disagg_router_ttft_seconds", "Time to first token seen by the router",
                                ["mode"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.inter_token_s = Histogram("disagg_router_inter_token_seconds", "Gap between streamed chunks",
                                       ["mode"], buckets=INTER_TOKEN_BUCKETS_S, registry=r)
        self.e2e_s = Histogram("disagg_router_e2e_seconds", "End-to-end request latency",
                               ["mode"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.queue_s = Histogram("disagg_router_queue_seconds", "Time waiting for an in-flight slot",
                                 buckets=LATENCY_BUCKETS_S, registry=r)
        self.prefill_s = Histogram("disagg_router_prefill_seconds", "Prefill request time on the prefill node",
                                   buckets=LATENCY_BUCKETS_S, registry=r)
        self.decode_ttft_s = Histogram("disagg_router_decode_ttft_seconds",
                                       "Decode node's time to its first chunk (its KV pull and first decode step)",
                                       buckets=LATENCY_BUCKETS_S, registry=r)
        self.kv_bytes = Counter("disagg_router_kv_bytes", "KV bytes of disaggregated prompts "
                                "(prompt tokens x KV bytes per token)", registry=r)
        self.request_kv_bytes = Histogram("disagg_router_request_kv_bytes", "KV bytes per disaggregated request",
                                          buckets=KV_BUCKETS_BYTES, registry=r)
        self.decisions = Counter("disagg_router_decisions", "Disagg-mode requests by where they were prefilled "
                                 "(remote, local) and why (router.decider)", ["decision", "reason"], registry=r)
        self.in_flight = Gauge("disagg_router_requests_in_flight", "Requests being served", registry=r)
        self.queued = Gauge("disagg_router_requests_queued", "Requests waiting for an in-flight slot", registry=r)
        self.nodes_healthy = Gauge("disagg_router_nodes_healthy", "Healthy nodes by role", ["role"], registry=r)

    def observe(self, timing: RequestTiming) -> None:
        self.requests.labels(timing.endpoint, timing.mode, timing.status).inc()
        if timing.status not in ("ok", "stream_error", "client_disconnected"):
            return  # refused or failed before an answer began: no latency breakdown
        if timing.total_s is not None:
            self.e2e_s.labels(timing.mode).observe(timing.total_s)
        self.queue_s.observe(timing.queue_s)
        if timing.prefill_s is not None:
            self.prefill_s.observe(timing.prefill_s)
        if timing.ttft_s is not None:  # streams: arrival (queue included) to the first token's chunk
            self.ttft_s.labels(timing.mode).observe(timing.ttft_s)
        if timing.decode_ttft_s is not None and timing.mode == "disagg":
            self.decode_ttft_s.observe(timing.decode_ttft_s)
        if timing.kv_bytes:
            self.kv_bytes.inc(timing.kv_bytes)
            self.request_kv_bytes.observe(timing.kv_bytes)
