"""The router's Prometheus metrics, on a registry of its own (one per app, so tests can build several)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from disagg.messages import RequestTiming

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)


@dataclass
class RouterMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("disagg_router_requests", "Requests by endpoint, mode and outcome",
                                ["endpoint", "mode", "status"], registry=r)
        self.failures = Counter("disagg_router_failures", "Failures by reason", ["reason"], registry=r)
        self.ttft_s = Histogram("disagg_router_ttft_seconds", "Time to first token seen by the router",
                                ["mode"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.e2e_s = Histogram("disagg_router_e2e_seconds", "End-to-end request latency",
                               ["mode"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.prefill_s = Histogram("disagg_router_prefill_seconds", "Prefill request time on the prefill node",
                                   buckets=LATENCY_BUCKETS_S, registry=r)
        self.decode_ttft_s = Histogram("disagg_router_decode_ttft_seconds",
                                       "Decode node's time to first token (includes its KV pull)",
                                       buckets=LATENCY_BUCKETS_S, registry=r)
        self.kv_bytes = Counter("disagg_router_kv_bytes", "KV bytes of disaggregated prompts "
                                "(prompt tokens x KV bytes per token)", registry=r)
        self.in_flight = Gauge("disagg_router_requests_in_flight", "Requests being served", registry=r)
        self.nodes_healthy = Gauge("disagg_router_nodes_healthy", "Healthy nodes by role", ["role"], registry=r)

    def observe(self, timing: RequestTiming) -> None:
        self.requests.labels(timing.endpoint, timing.mode, timing.status).inc()
        if timing.total_s is not None:
            self.e2e_s.labels(timing.mode).observe(timing.total_s)
        if timing.prefill_s is not None:
            self.prefill_s.observe(timing.prefill_s)
            ttft_s = timing.prefill_s + (timing.decode_ttft_s or 0.0)
            if timing.decode_ttft_s is not None:
                self.ttft_s.labels(timing.mode).observe(timing.queue_s + ttft_s)
        elif timing.decode_ttft_s is not None:
            self.ttft_s.labels(timing.mode).observe(timing.queue_s + timing.decode_ttft_s)
        if timing.decode_ttft_s is not None and timing.mode == "disagg":
            self.decode_ttft_s.observe(timing.decode_ttft_s)
        if timing.kv_bytes:
            self.kv_bytes.inc(timing.kv_bytes)
