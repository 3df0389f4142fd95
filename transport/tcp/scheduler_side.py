"""Scheduler-side half of the TCP KV connector (runs in vLLM's engine-core process).

Prefill (`do_remote_decode`): when a request finishes, keep its blocks (delay free), publish them to the
worker's block server for `lease_s`, and return their ids and the server's endpoint as `kv_transfer_params`.
Decode (`do_remote_prefill`): report the prompt as loadable asynchronously, and once blocks are allocated,
tell the worker to pull into them, in the wire dtype the request's `kv_transfer_params["kv_wire_dtype"]`
names (else the node's `wire_dtype` setting). Every request that carried remote blocks is either pulled or released,
so the prefill side never holds blocks longer than one transfer or one lease.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from transport.tcp.metadata import PullSpec, TcpConnectorMetadata
from transport.tcp.settings import TcpConnectorSettings
from transport.tcp.wire_dtype import AUTO, WIRE_DTYPES

if TYPE_CHECKING:
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.request import Request

logger = logging.getLogger(__name__)

_REMOTE_KEYS = ("remote_request_id", "remote_host", "remote_port")
WIRE_DTYPE_PARAM = "kv_wire_dtype"  # decode request's kv_transfer_params: this pull's wire dtype


class TcpConnectorScheduler:
    def __init__(self, settings: TcpConnectorSettings, engine_id: str) -> None:
        self.settings = settings
        self.engine_id = engine_id
        self._reqs_need_recv: dict[str, PullSpec] = {}
        self._reqs_need_send: dict[str, list[int]] = {}

    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int) -> tuple[int, bool]:
        """Decode side: every prompt token the prefill node computed and this node did not comes from the
        prefill node, asynchronously.

        The prefill node computed `remote_num_tokens` tokens (its prompt). When the router continues a request
        from the prompt plus the prefill node's first token, this node's prompt is one token longer: that last
        token's KV exists nowhere, so it is computed here, and that one forward pass samples the next token.
        When the prompt is the prefill node's own, all of it loads and vLLM recomputes its last token to sample.
        """
        params = request.kv_transfer_params
        if not params or not params.get("do_remote_prefill") or not _has_remote(params):
            return 0, False
        prompt_tokens = len(request.prompt_token_ids or ())
        remote_tokens = params.get("remote_num_tokens")
        loadable = prompt_tokens if remote_tokens is None else min(prompt_tokens, int(remote_tokens))
        count = loadable - num_computed_tokens
        return (count, True) if count > 0 else (0, False)

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int) -> None:
        """Decode side: blocks are allocated; plan the pull (or only a release on a full local cache hit)."""
        params = request.kv_transfer_params
        if not params or not params.get("do_remote_prefill"):
            return
        params["do_remote_prefill"] = False  # one transfer per request, even if called again
        if not _has_remote(params):
            logger.warning("request %s: kv_transfer_params without %s; computing it locally",
                           request.request_id, ", ".join(_REMOTE_KEYS))
            return
        local_block_ids: list[int] = []
        num_cached_blocks = 0
        if num_external_tokens > 0:
            (local_block_ids,) = blocks.get_unhashed_block_ids_all_groups()
            num_cached_blocks = sum(b.block_hash is not None and not b.is_null for b in blocks.blocks[0])
        self._reqs_need_recv[request.request_id] = _pull_spec(params, local_block_ids, num_cached_blocks,
                                                              awaiting=num_external_tokens > 0)

    def build_connector_meta(self) -> TcpConnectorMetadata:
        """Both sides: hand this step's pulls and publications to the worker, then forget them."""
        meta = TcpConnectorMetadata(reqs_to_recv=self._reqs_need_recv, reqs_to_send=self._reqs_need_send,
                                    lease_s=self.settings.lease_s)
        self._reqs_need_recv, self._reqs_need_send = {}, {}
        return meta

    def request_finished(self, request: Request, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        """Prefill side: hold a completed prefill's blocks for the decode node and say where they are.

        Decode side: a request that finished before its pull was planned (aborted or rejected) releases the
        prefill node's blocks.
        """
        from vllm.v1.request import RequestStatus

        params = request.kv_transfer_params
        if not params:
            return False, None
        if params.get("do_remote_prefill"):
            params["do_remote_prefill"] = False
            if _has_remote(params):
                self._reqs_need_recv[request.request_id] = _pull_spec(params, [], 0, awaiting=False)
            return False, None
        if not params.get("do_remote_decode") or not block_ids:
            return False, None
        if request.status not in (RequestStatus.FINISHED_LENGTH_CAPPED, RequestStatus.FINISHED_STOPPED):
            return False, None  # aborted prefill: free now; a later pull is refused as unknown
        self._reqs_need_send[request.request_id] = list(block_ids)
        return True, {
            "do_remote_prefill": True,
            "do_remote_decode": False,
            "remote_block_ids": list(block_ids),
            "remote_engine_id": self.engine_id,
            "remote_request_id": request.request_id,
            "remote_host": self.settings.host,
            "remote_port": self.settings.port,
            "remote_num_tokens": request.num_computed_tokens,
            "tp_size": 1,
            "kv_transport": "tcp",
        }


def _has_remote(params: dict[str, Any]) -> bool:
    return all(params.get(key) is not None for key in _REMOTE_KEYS)


def _pull_spec(params: dict[str, Any], local_block_ids: list[int], first_remote_block: int,
               awaiting: bool) -> PullSpec:
    return PullSpec(remote_request_id=str(params["remote_request_id"]), remote_host=str(params["remote_host"]),
                    remote_port=int(params["remote_port"]), local_block_ids=list(local_block_ids),
                    first_remote_block=first_remote_block, awaiting=awaiting,
                    wire_dtype=requested_wire_dtype(params))


def requested_wire_dtype(params: dict[str, Any]) -> str | None:
    """A request's `kv_transfer_params["kv_wire_dtype"]` (native, bf16, fp16, int8 or auto), or None for the
    node's setting; an unknown value is logged and the node's setting used (the request is not failed for it)."""
    value = params.get(WIRE_DTYPE_PARAM)
    if value is None:
        return None
    name = str(value).strip().lower()
    if name != AUTO and name not in WIRE_DTYPES:
        logger.warning("kv_transfer_params %s=%r is not one of %s; using the node's setting", WIRE_DTYPE_PARAM,
                       value, ", ".join((*WIRE_DTYPES, AUTO)))
        return None
    return name
