"""What the scheduler-side connector tells the worker-side connector each engine step."""

from __future__ import annotations

from dataclasses import dataclass, field

from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorMetadata


@dataclass
class PullSpec:
    """Decode side: pull one request's blocks from a prefill node (or, with no local blocks, only release them)."""

    remote_request_id: str
    remote_host: str
    remote_port: int
    local_block_ids: list[int]
    first_remote_block: int  # remote blocks before it are already cached locally (prefix cache hit)
    awaiting: bool  # the scheduler holds the request in WAITING_FOR_REMOTE_KVS until this pull reports
    wire_dtype: str | None = None  # the request's kv_transfer_params["kv_wire_dtype"]; None: the node's setting


@dataclass
class TcpConnectorMetadata(KVConnectorMetadata):
    reqs_to_recv: dict[str, PullSpec] = field(default_factory=dict)
    # prefill side: finished requests whose blocks are now held for decode to pull
    reqs_to_send: dict[str, list[int]] = field(default_factory=dict)
    lease_s: float = 30.0
