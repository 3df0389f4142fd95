"""The prefill role: vLLM as `kv_producer`. It computes each prompt's KV and the first token, and keeps the
prompt's blocks until the decode node pulls them, the request is aborted, or the lease (`kv_lease_s`) ends."""

from __future__ import annotations

from node.role import NodeRole, RoleDefaults

ROLE = NodeRole(
    name="prefill",
    kv_role="kv_producer",
    defaults=RoleDefaults(port=8100, info_port=8101, kv_port=5601, cpu_cores="0"),
    help="run a prefill node (vLLM as kv_producer: computes KV and keeps it until the decode node pulls it)",
)
