"""The decode role: vLLM as `kv_consumer`. Given a prefill node's `kv_transfer_params` it pulls the prompt's KV
and generates; a request without them is served colocated (the single-node baseline runs on a decode node).

A pull that fails (peer gone, lease expired, checksum mismatch) is recomputed locally
(`kv_load_failure_policy: recompute`): a decode node never decodes from missing or corrupt KV.
"""

from __future__ import annotations

from node.role import NodeRole, RoleDefaults

ROLE = NodeRole(
    name="decode",
    kv_role="kv_consumer",
    defaults=RoleDefaults(port=8200, info_port=8201, kv_port=5602, cpu_cores="1"),
    help="run a decode node (vLLM as kv_consumer: pulls KV from the prefill node and generates; also the colocated baseline)",
    connector_policy={"kv_load_failure_policy": "recompute"},
)
