"""vLLM's NixlConnector, loaded through `kv_connector_module_path`, with one change on the decode side.

    --kv-transfer-config '{"kv_connector": "NixlConnector", "kv_connector_module_path": "transport.nixl.connector",
                           "kv_role": "kv_consumer", "kv_buffer_device": "cpu", ...}'

The class keeps vLLM's name, so every check vLLM makes by connector name (`has_connector("NixlConnector")`)
still holds; vLLM's factory takes a module path over its own registry.

The change: a decode request may continue from the prompt *plus the prefill node's first token* (the router
sends the client that token at once, then asks the decode node for the rest). Its prompt is then one token
longer than what the prefill node computed (`remote_num_tokens` in `kv_transfer_params`). vLLM's connector
would claim every prompt token as remote and, with all of them loaded, make the scheduler recompute the last
one (vllm/v1/core/sched/scheduler.py, `_update_waiting_for_remote_kv`); when the longer prompt crosses a block
boundary it would also ask the prefill node for a block it does not have. Capped at `remote_num_tokens`, the
decode node reads exactly the prefill node's blocks and computes only the first token's forward pass, which
samples the second token: no token is computed twice (SGLang's behaviour; vllm-project/vllm PR #51919).
A request whose prompt is the prefill node's own is unchanged: all of it loads, its last token is recomputed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vllm.distributed.kv_transfer.kv_connector.v1.nixl.connector import NixlConnector as _VllmNixlConnector

if TYPE_CHECKING:
    from vllm.v1.request import Request


class NixlConnector(_VllmNixlConnector):
    """vLLM's NixlConnector; scheduler side: remote tokens capped at what the prefill node computed."""

    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int) -> tuple[int | None, bool]:
        count, load_async = super().get_num_new_matched_tokens(request, num_computed_tokens)
        params = request.kv_transfer_params or {}
        remote_tokens = params.get("remote_num_tokens")
        if not count or not params.get("do_remote_prefill") or remote_tokens is None:
            return count, load_async
        capped = min(count, int(remote_tokens) - num_computed_tokens)
        return (capped, load_async) if capped > 0 else (0, False)
