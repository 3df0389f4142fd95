"""What the scheduler side tells the worker side each step (vLLM passes it in-process or over its own IPC).

`loads`: request id → [(block id, block hash)] to fill from the tier before this step's forward pass.
`stores`: [(request id, block id, block hash)] of prompt blocks this step's forward pass completes, to copy
out to the tier after it. Block hashes are vLLM's (`Request.block_hashes`); the worker turns them into keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorMetadata


@dataclass
class KvTierMetadata(KVConnectorMetadata):
    loads: dict[str, list[tuple[int, bytes]]] = field(default_factory=dict)
    stores: list[tuple[str, int, bytes]] = field(default_factory=list)
