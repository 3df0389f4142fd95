"""`KvTierConnector`: a KV tier shared by the prefill nodes, a `KVConnectorBase_V1` vLLM loads by module path.

It runs second in a `MultiConnector`, after the P/D connector (ours, `transport.tcp.connector`, or our
`transport.nixl.connector.NixlConnector`), on prefill nodes only (`transport.kv_tier.compose` builds the
config; `node.launch` uses it):

    {"kv_connector": "MultiConnector", "kv_role": "kv_producer", "kv_load_failure_policy": "recompute",
     "kv_connector_extra_config": {"connectors": [
        {<the P/D connector's config, with its kv_role>},
        {"kv_connector": "KvTierConnector", "kv_connector_module_path": "transport.kv_tier.connector",
         "kv_role": "kv_both", "kv_connector_extra_config": {"backend": "redis", "url": "redis://...", ...}}]}}

A prompt block found in the tier (by vLLM's chained block hash, in a namespace of the model, KV layout and
block size: `transport.kv_tier.keys`) is loaded instead of computed; a prompt block computed here is stored.
Settings: `transport.kv_tier.settings`; halves: `scheduler_side` (lookups, plans) and `worker_side` (loads,
stores); metrics: `stats` (`vllm:disagg_kv_tier_*`).

Why our own connector (issue 16; the evidence is in its closing note): LMCache 0.5.6 has no vLLM
connector for the CPU backend (`CreateGPUConnector` raises "No supported cpu connector found", its wheel
requires CUDA packages, and its MP mode pickles tensors); vLLM 0.32's `OffloadingConnector` (CPU and `fs`
tiers) refuses a CPU worker ("CPU Offloading is currently only supported on CUDA-alike and XPU GPUs") and
has no Redis tier, and `SimpleCPUOffloadConnector` is CUDA-only. This one works the same on CPU and GPU
hosts (the block store stages GPU KV through host memory) and with both transports.

The module registers the class with vLLM's `KVConnectorFactory` on import: a MultiConnector rebuilds its
children's stats in the API server by registered name, and an unregistered child fails every request there.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import torch

from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)
from vllm.distributed.kv_transfer.kv_connector.v1.metrics import KVConnectorStats
from vllm.v1.metrics.cache_hit_source import CacheHitSource

from core.cluster_token import CLUSTER_TOKEN_ENV
from transport.connector_stats import StatsHooks
from transport.kv_tier import backend as backends
from transport.kv_tier.keys import Namespace, model_identity
from transport.kv_tier.metadata import KvTierMetadata
from transport.kv_tier.scheduler_side import TierScheduler
from transport.kv_tier.settings import KvTierSettings
from transport.kv_tier.stats import KvTierPromMetrics, KvTierStats

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.attention.backend import AttentionMetadata
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks, KVCacheManager
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

    from transport.kv_tier.worker_side import TierWorker

CONNECTOR_NAME = "KvTierConnector"


class KvTierConnector(StatsHooks, KVConnectorBase_V1):
    STATS_CLS, PROM_CLS = KvTierStats, KvTierPromMetrics

    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole, kv_cache_config: KVCacheConfig) -> None:
        super().__init__(vllm_config, role, kv_cache_config)
        _route_logs_through_vllm()
        if len(kv_cache_config.kv_cache_groups) != 1:
            raise NotImplementedError("KvTierConnector supports one KV cache group (full attention) only")
        self.settings = KvTierSettings.from_extra_config(self._kv_transfer_config.kv_connector_extra_config)
        self.namespace = namespace_of(vllm_config, kv_cache_config)
        block_size = kv_cache_config.kv_cache_groups[0].kv_cache_spec.block_size
        password = os.environ.get(CLUSTER_TOKEN_ENV) if self.settings.auth_with_cluster_token else None
        self._hit_source = CacheHitSource(backends.backend_class(self.settings.backend).hit_source)
        self.scheduler: TierScheduler | None = None
        self.worker: TierWorker | None = None
        if role == KVConnectorRole.SCHEDULER:
            self.scheduler = TierScheduler(self.settings, self.namespace, block_size, lambda: backends.create(
                self.settings, timeout_s=self.settings.lookup_budget_s, password=password))
        else:
            from transport.kv_tier.worker_side import TierWorker

            self.worker = TierWorker(self.settings, self.namespace, block_size, backends.create(
                self.settings, timeout_s=self.settings.op_timeout_s, password=password))

    @property
    def requires_kv_delivery(self) -> bool:
        """A best-effort cache: a dropped store is a future miss, never a lost hand-off."""
        return False

    # ---- scheduler side -------------------------------------------------------------------------------

    def bind_kv_cache_manager(self, kv_cache_manager: KVCacheManager) -> None:
        super().bind_kv_cache_manager(kv_cache_manager)
        if self.scheduler is not None:
            self.scheduler.kv_cache_manager = kv_cache_manager

    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int) -> tuple[int | None, bool]:
        """Scheduler-side: whole prompt blocks past the local hit found in the tier (synchronous load)."""
        assert self.scheduler is not None
        return self.scheduler.get_num_new_matched_tokens(request, num_computed_tokens)

    def get_external_cache_hit_sources(self, request: Request, num_external_tokens: int) -> dict[CacheHitSource, int]:
        return {self._hit_source: num_external_tokens} if num_external_tokens else {}

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int) -> None:
        """Scheduler-side: plan the load into the allocated blocks; follow the request to store its blocks."""
        assert self.scheduler is not None
        self.scheduler.update_state_after_alloc(request, blocks, num_external_tokens)

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        """Scheduler-side: this step's loads and the prompt blocks it completes."""
        assert self.scheduler is not None
        return self.scheduler.build_connector_meta(scheduler_output)

    def request_finished(self, request: Request, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        """Scheduler-side: nothing held, no kv_transfer_params (the P/D connector owns those)."""
        assert self.scheduler is not None
        return self.scheduler.request_finished(request)

    # ---- worker side ----------------------------------------------------------------------------------

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        assert self.worker is not None
        self.worker.register_kv_caches(kv_caches)

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        """Worker-side: fill this step's tier hits before the forward pass (vLLM calls it first when a step
        has synchronous loads)."""
        assert self.worker is not None
        meta = self._get_connector_metadata()
        assert isinstance(meta, KvTierMetadata)
        self.worker.load(meta)

    def wait_for_layer_load(self, layer_name: str) -> None:
        """Worker-side: nothing; loads are whole blocks, done in `start_load_kv`."""

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: AttentionMetadata,
                      **kwargs: Any) -> None:
        """Worker-side: nothing; completed blocks are copied out in `wait_for_save`."""

    def wait_for_save(self) -> None:
        """Worker-side: copy the blocks this step completed out and queue them for the tier."""
        assert self.worker is not None
        meta = self._get_connector_metadata()
        assert isinstance(meta, KvTierMetadata)
        self.worker.save(meta)

    def get_block_ids_with_load_errors(self) -> set[int]:
        return self.worker.get_block_ids_with_load_errors() if self.worker is not None else set()

    def get_kv_connector_stats(self) -> KVConnectorStats | None:
        """Both sides: this interval's counters (scheduler: lookups; worker: loads and stores)."""
        side = self.worker or self.scheduler
        return None if side is None else side.take_stats()

    def shutdown(self) -> None:
        side = self.worker or self.scheduler
        if side is not None:
            side.shutdown()


def namespace_of(vllm_config: VllmConfig, kv_cache_config: KVCacheConfig) -> Namespace:
    """The key namespace of this engine's KV blocks (`transport.kv_tier.keys`)."""
    from vllm.platforms import current_platform

    group = kv_cache_config.kv_cache_groups[0]
    spec = group.kv_cache_spec
    kv_spec = ":".join(str(part) for part in (
        type(spec).__name__, spec.block_size, getattr(spec, "num_kv_heads", None), getattr(spec, "head_size", None),
        spec.dtype, ",".join(sorted(group.layer_names))))
    model = vllm_config.model_config
    return Namespace.of(model_identity=model_identity(model.model, model.revision), kv_spec=kv_spec,
                        block_size=spec.block_size, hash_algo=str(vllm_config.cache_config.prefix_caching_hash_algo),
                        device=str(current_platform.device_type))


def _route_logs_through_vllm() -> None:
    """Give `transport.kv_tier.*` loggers vLLM's handlers and level, once."""
    ours, theirs = logging.getLogger("transport.kv_tier"), logging.getLogger("vllm")
    if ours.handlers or not theirs.handlers:
        return
    for handler in theirs.handlers:
        ours.addHandler(handler)
    ours.setLevel(theirs.level)
    ours.propagate = False


if CONNECTOR_NAME not in KVConnectorFactory._registry:  # see the module docstring
    KVConnectorFactory.register_connector(CONNECTOR_NAME, __name__, CONNECTOR_NAME)
