"""The `nixl` transport: vLLM's NixlConnector, UCX underneath (RDMA, shared memory, or UCX's TCP).

`plugin` (the registered `Transport`), `ucx_link` (UCX's settings per link type), `library` (the one import of
NIXL), and doctor's probes, each in a child process (`child`): `native_probe` (NIXL and UCX as this host sees
them) and `loopback` (a READ between two agents).
"""
