"""`DisaggTcpConnector`: our TCP KV connector, a `KVConnectorBase_V1` that vLLM loads by module path.

    --kv-transfer-config '{"kv_connector": "DisaggTcpConnector",
                           "kv_connector_module_path": "transport.tcp.connector",
                           "kv_role": "kv_producer",            # prefill; "kv_consumer" decode; "kv_both"
                           "kv_connector_extra_config": {"host": "127.0.0.1", "port": 5750, "lease_s": 30}}'

Settings: `transport.tcp.settings`. Protocol: vLLM's pull protocol, as NixlConnector's. The prefill node
keeps a finished request's blocks and returns `kv_transfer_params` (`remote_block_ids`,
`remote_request_id`, `remote_host`, `remote_port`, ...); the decode node, given those, allocates blocks and
pulls all of them, every layer, in one TCP exchange (`transport.tcp.wire`), then releases them. Failed pulls
follow `kv_load_failure_policy` ("fail", vLLM's default, or "recompute"). Supported: one KV cache group
(full-attention models), tensor/pipeline/data parallel size 1.

This class only routes vLLM's calls: scheduler-side ones to `TcpConnectorScheduler`
(`transport.tcp.scheduler_side`), worker-side ones to `TcpConnectorWorker` (`transport.tcp.worker_side`).
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
    KVConnectorTransferResults,
)
from vllm.distributed.kv_transfer.kv_connector.v1.metrics import KVConnectorStats
from vllm.v1.metrics.cache_hit_source import CacheHitSource

from transport.connector_stats import StatsHooks
from transport.tcp.metadata import TcpConnectorMetadata
from transport.tcp.scheduler_side import TcpConnectorScheduler
from transport.tcp.settings import TcpConnectorSettings
from transport.tcp.stats import TcpKVConnectorStats, TcpPromMetrics

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.attention.backend import AttentionMetadata
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

    from transport.tcp.worker_side import TcpConnectorWorker


class DisaggTcpConnector(StatsHooks, KVConnectorBase_V1):
    _cache_hit_source = CacheHitSource.P2P
    STATS_CLS, PROM_CLS = TcpKVConnectorStats, TcpPromMetrics

    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole, kv_cache_config: KVCacheConfig) -> None:
        super().__init__(vllm_config, role, kv_cache_config)
        _route_logs_through_vllm()
        _check_supported(vllm_config, kv_cache_config)
        transfer_config = self._kv_transfer_config
        self.settings = TcpConnectorSettings.from_extra_config(transfer_config.kv_connector_extra_config,
                                                              os.environ)
        self.scheduler: TcpConnectorScheduler | None = None
        self.worker: TcpConnectorWorker | None = None
        if role == KVConnectorRole.SCHEDULER:
            self.scheduler = TcpConnectorScheduler(self.settings, str(transfer_config.engine_id))
        else:
            from transport.tcp.worker_side import TcpConnectorWorker

            self.worker = TcpConnectorWorker(self.settings, serve_blocks=transfer_config.is_kv_producer,
                                             head_size=_head_size(kv_cache_config))

    # ---- scheduler side -------------------------------------------------------------------------------

    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int) -> tuple[int | None, bool]:
        """Scheduler-side: decode requests load the whole uncomputed prompt asynchronously."""
        assert self.scheduler is not None
        return self.scheduler.get_num_new_matched_tokens(request, num_computed_tokens)

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int) -> None:
        """Scheduler-side: plan the pull into the blocks just allocated."""
        assert self.scheduler is not None
        self.scheduler.update_state_after_alloc(request, blocks, num_external_tokens)

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        """Scheduler-side: this step's pulls (decode) and newly held blocks (prefill) for the worker."""
        assert self.scheduler is not None
        return self.scheduler.build_connector_meta()

    def request_finished(self, request: Request, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        """Scheduler-side: prefill holds the blocks (delay free) and returns where to pull them from."""
        assert self.scheduler is not None
        return self.scheduler.request_finished(request, block_ids)

    def get_loaded_kv_cache_group_ids(self, request: Request) -> tuple[int, ...]:
        """Scheduler-side: a pull restores the request's own blocks in every transfer group."""
        return self._kv_cache_config.transfer_group_ids

    # ---- worker side ----------------------------------------------------------------------------------

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        """Worker-side: map the KV tensors; prefill (and kv_both) nodes start the block server."""
        assert self.worker is not None
        self.worker.register_kv_caches(kv_caches)

    def bind_connector_metadata(self, connector_metadata: KVConnectorMetadata) -> None:
        """Worker-side: start this step's transfers as soon as its metadata arrives, before the forward.

        Publishing here rather than in `start_load_kv` (which vLLM may call after a long forward) lets a
        prefill node serve a finished request within one scheduler step; pulls are asynchronous either way.
        """
        super().bind_connector_metadata(connector_metadata)
        assert self.worker is not None
        assert isinstance(connector_metadata, TcpConnectorMetadata)
        self.worker.start_transfers(connector_metadata)

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        """Worker-side: nothing left to start (see `bind_connector_metadata`)."""

    def wait_for_layer_load(self, layer_name: str) -> None:
        """Worker-side: nothing; pulls are whole requests, not layers."""

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: AttentionMetadata,
                      **kwargs: Any) -> None:
        """Worker-side: nothing; the prefill side serves blocks from the KV cache itself."""

    def wait_for_save(self) -> None:
        """Worker-side: nothing to save."""

    def get_transfer_results(self, finished_req_ids: set[str]) -> KVConnectorTransferResults:
        """Worker-side: blocks released or expired on prefill; pulls ended (and failed) on decode."""
        assert self.worker is not None
        sending, recving, failed = self.worker.get_transfer_results()
        return KVConnectorTransferResults(finished_sending=sending, finished_recving=recving,
                                          failed_recving=failed)

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        results = self.get_transfer_results(finished_req_ids)
        return results.finished_sending, results.finished_recving

    def get_block_ids_with_load_errors(self) -> set[int]:
        """Worker-side: blocks of failed pulls, reported with the request's `failed_recving`."""
        assert self.worker is not None
        return self.worker.get_block_ids_with_load_errors()

    def get_kv_connector_stats(self) -> KVConnectorStats | None:
        """Worker-side: bytes and seconds of this interval's transfers."""
        return None if self.worker is None else self.worker.get_kv_connector_stats()

    def shutdown(self) -> None:
        if self.worker is not None:
            self.worker.shutdown()


def _check_supported(vllm_config: VllmConfig, kv_cache_config: KVCacheConfig) -> None:
    parallel = vllm_config.parallel_config
    sizes = {"tensor": parallel.tensor_parallel_size, "pipeline": parallel.pipeline_parallel_size,
             "data": parallel.data_parallel_size}
    if any(size != 1 for size in sizes.values()):
        raise NotImplementedError(f"DisaggTcpConnector supports parallel size 1 only, not {sizes}")
    if len(kv_cache_config.kv_cache_groups) > 1:
        raise NotImplementedError("DisaggTcpConnector supports one KV cache group (full attention) only")


def _head_size(kv_cache_config: KVCacheConfig) -> int | None:
    """The KV heads' size: a row of the wire codec (one token's K or V in one head)."""
    groups = kv_cache_config.kv_cache_groups
    return getattr(groups[0].kv_cache_spec, "head_size", None) if groups else None


def _route_logs_through_vllm() -> None:
    """Give `transport.tcp.*` loggers vLLM's handlers and level (VLLM_LOGGING_LEVEL), once."""
    ours, theirs = logging.getLogger("transport.tcp"), logging.getLogger("vllm")
    if ours.handlers or not theirs.handlers:
        return
    for handler in theirs.handlers:
        ours.addHandler(handler)
    ours.setLevel(theirs.level)
    ours.propagate = False


# Registered by name on import: inside a MultiConnector (a prefill node with a KV tier, transport/kv_tier), the
# API server rebuilds each child's stats by registered name, and an unregistered child fails every request.
if "DisaggTcpConnector" not in KVConnectorFactory._registry:
    KVConnectorFactory.register_connector("DisaggTcpConnector", __name__, "DisaggTcpConnector")
