"""The `nixl` transport: vLLM's NixlConnector, UCX underneath (RDMA, shared memory, or UCX's TCP)."""
