"""What our vLLM connectors (`transport.tcp`, `transport.kv_tier`) share for their stats and metrics.

vLLM's stats protocol (`vllm.distributed.kv_transfer.kv_connector.v1.metrics`): each worker records into a
`KVConnectorStats`; vLLM takes it per interval (`clone_and_reset`), sends `data` to the API server, merges
the workers' (`aggregate`), logs `reduce()` as `KV Transfer metrics: ...` and hands the raw `data` to the
connector's `KVConnectorPromMetrics.observe`. Ours keep every value as a plain list of numbers under a fixed
set of keys, so `data` crosses vLLM's process boundary as plain data.

- `ListStats`: the list-of-numbers stats; a subclass names its keys in `LISTS` and writes `reduce()`.
- `StatsHooks`: the connector classmethods vLLM calls to rebuild stats and metrics (a mixin naming
  `STATS_CLS` and `PROM_CLS`).
- `per_engine_maker`: Prometheus metrics labelled per engine, as vLLM's own connectors build theirs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from vllm.config import VllmConfig
from vllm.distributed.kv_transfer.kv_connector.v1.metrics import (
    KVConnectorPromMetrics,
    KVConnectorStats,
    PromMetric,
)
from vllm.v1.metrics.utils import create_metric_per_engine


@dataclass
class ListStats(KVConnectorStats):
    """Per-interval observations: `data[key]` is a list of numbers for every key in `LISTS`."""

    LISTS: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        if not self.data:
            self.reset()

    def reset(self) -> None:
        self.data = {key: [] for key in self.LISTS}

    def clone_and_reset(self) -> ListStats:
        old = copy.copy(self)
        self.reset()
        return old

    def is_empty(self) -> bool:
        return not any(self.data.get(key) for key in self.LISTS)

    def aggregate(self, other: KVConnectorStats) -> KVConnectorStats:
        """Append `other`'s observations (another worker's, or a later interval's) to these."""
        for key in self.LISTS:
            self.data.setdefault(key, []).extend(other.data.get(key, []))
        return self


class StatsHooks:
    """Connector mixin: vLLM rebuilds a connector's stats and metrics in the API server through these."""

    STATS_CLS: ClassVar[type[ListStats]]
    PROM_CLS: ClassVar[type[KVConnectorPromMetrics]]

    @classmethod
    def build_kv_connector_stats(cls, data: dict[str, Any] | None = None) -> KVConnectorStats | None:
        return cls.STATS_CLS(data=data) if data is not None else cls.STATS_CLS()

    @classmethod
    def build_prom_metrics(cls, vllm_config: VllmConfig, metric_types: dict, labelnames: list[str],
                           per_engine_labelvalues: dict[int, list[object]]) -> KVConnectorPromMetrics | None:
        return cls.PROM_CLS(vllm_config, metric_types, labelnames, per_engine_labelvalues)


def per_engine_maker(labelnames: list[str],
                     per_engine_labelvalues: dict[int, list[object]]) -> Callable[..., dict[int, PromMetric]]:
    """`make(metric_cls, name, doc, **kwargs)`: one metric `name` per engine index, with that engine's labels."""

    def make(metric_cls: Any, name: str, doc: str, **kwargs: Any) -> dict[int, PromMetric]:
        return create_metric_per_engine(metric_cls(name=name, documentation=doc, labelnames=labelnames, **kwargs),
                                        per_engine_labelvalues)

    return make
