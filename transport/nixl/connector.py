"""vLLM's NixlConnector, loaded through `kv_connector_module_path`, with two changes.

    --kv-transfer-config '{"kv_connector": "NixlConnector", "kv_connector_module_path": "transport.nixl.connector",
                           "kv_role": "kv_consumer", "kv_buffer_device": "cpu",
                           "kv_connector_extra_config": {"progress_thread": false, ...}}'

The class keeps vLLM's name, so every check vLLM makes by connector name (`has_connector("NixlConnector")`)
still holds; vLLM's factory takes a module path over its own registry (kv_connector/factory.py).

1. **The decode node continues from prompt + first token** (scheduler side). The router sends the client the
   prefill node's first token at once and asks the decode node for the rest, with the first token appended to
   the prompt. That prompt is one token longer than what the prefill node computed (`remote_num_tokens` in
   `kv_transfer_params`). vLLM's connector would claim every prompt token as remote and, with all of them
   loaded, make the scheduler recompute the last one (vllm/v1/core/sched/scheduler.py,
   `_update_waiting_for_remote_kv`); when the longer prompt crosses a block boundary it would also ask the
   prefill node for a block it does not have. Capped at `remote_num_tokens`, the decode node reads exactly the
   prefill node's blocks and computes only the first token's forward pass, which samples the second token: no
   token is computed twice (SGLang's behaviour; vllm-project/vllm PR #51919). A request whose prompt is the
   prefill node's own is unchanged: all of it loads and its last token is recomputed.
2. **No busy-polling progress thread** (worker side, `progress_thread: false`). NIXL 1.5.1's UCX backend runs a
   progress thread (`nixlUcxSharedThread`) that loops on `ucp_worker_arm` and holds a core at 50-100 % while
   idle, whatever UCX transports are enabled (measured on this project's 2-core CPU host: a bare NIXL agent
   with the UCX backend, 90-99 % with the thread, 0 % without; an idle vLLM node likewise). vLLM does not
   expose NIXL's `enable_prog_thread`, so while vLLM builds its NIXL agent this class hands it an agent config
   with the thread off. Transfers still progress: the decode engine steps (and polls its transfers) while a
   request waits for KV, and the prefill engine keeps stepping (and reading NIXL notifications) while it holds
   blocks for a pull (`Scheduler.has_finished_requests`); an engine with nothing to do blocks on its queue.
"""

from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING, Any, Iterator

from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole
from vllm.distributed.kv_transfer.kv_connector.v1.nixl import base_worker
from vllm.distributed.kv_transfer.kv_connector.v1.nixl.connector import NixlConnector as _VllmNixlConnector

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request


EXTRA_CONFIG_KEYS = ("progress_thread",)  # the kv_connector_extra_config keys this class reads (vLLM's others)


class NixlConnector(_VllmNixlConnector):
    """vLLM's NixlConnector: remote tokens capped at what the prefill node computed; optionally no NIXL
    progress thread (`kv_connector_extra_config["progress_thread"]`, default true as in NIXL)."""

    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole, kv_cache_config: KVCacheConfig) -> None:
        extra = vllm_config.kv_transfer_config.kv_connector_extra_config or {}
        thread = bool(extra.get("progress_thread", True)) or role != KVConnectorRole.WORKER
        with contextlib.nullcontext() if thread else _agents_without_progress_thread():
            super().__init__(vllm_config, role, kv_cache_config)

    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int) -> tuple[int | None, bool]:
        count, load_async = super().get_num_new_matched_tokens(request, num_computed_tokens)
        params = request.kv_transfer_params or {}
        remote_tokens = params.get("remote_num_tokens")
        if not count or not params.get("do_remote_prefill") or remote_tokens is None:
            return count, load_async
        capped = min(count, int(remote_tokens) - num_computed_tokens)
        return (capped, load_async) if capped > 0 else (0, False)


@contextlib.contextmanager
def _agents_without_progress_thread() -> Iterator[None]:
    """While vLLM's NIXL worker is built, its agent config has NIXL's progress thread off."""
    original: Any = base_worker.nixl_agent_config
    if original is None:  # NIXL not installed: vLLM reports that itself
        yield
        return
    base_worker.nixl_agent_config = functools.partial(original, enable_prog_thread=False)
    try:
        yield
    finally:
        base_worker.nixl_agent_config = original
