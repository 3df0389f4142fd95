"""NIXL's UCX settings per link type: the one place they live.

vLLM's NixlConnector hands transfers to NIXL's UCX backend, which picks its transports from the
environment (`UCX_TLS`, `UCX_NET_DEVICES`, ...). A node started with `--kv-link` gets these:

  auto  nothing: UCX picks what it finds (shared memory on one host, RDMA where a device is up, else TCP)
  roce  RDMA over Converged Ethernet (ConnectX on Ethernet, e.g. DGX Spark's ConnectX-7): rc, shared memory
        for this host's own traffic; UCX picks a RoCE v2 GID itself (set UCX_IB_GID_INDEX with --env only if
        `show_gids` says the default is wrong)
  ib    InfiniBand: rc and ud, shared memory for this host's own traffic
  tcp   UCX's TCP transport only (any IP link; also keeps two nodes on one host, or in two network
        namespaces, from using shared memory)
  shm   shared memory only: both nodes on one host

With KV in GPU memory (`--kv-buffer-device cuda`) the CUDA copy transports are added. `--kv-net-device`
sets UCX_NET_DEVICES (an RDMA port such as `mlx5_0:1`, or an interface such as `enp1s0f0np0` for tcp).
`--env` on the node is applied after these and wins.
"""

from __future__ import annotations

from core.errors import ConfigError

KV_LINKS: tuple[str, ...] = ("auto", "roce", "ib", "tcp", "shm")
_TRANSPORTS = {
    "roce": "rc,sm,self",
    "ib": "rc,ud,sm,self",
    "tcp": "tcp,self",
    "shm": "sm,self",
}
_CUDA_TRANSPORTS = {
    "roce": "cuda_copy,cuda_ipc,gdr_copy",
    "ib": "cuda_copy,cuda_ipc,gdr_copy",
    "tcp": "cuda_copy",
    "shm": "cuda_copy,cuda_ipc",
}


def ucx_env(link: str, kv_buffer_device: str = "cpu", net_device: str = "") -> dict[str, str]:
    """The UCX environment for a NIXL node on this kind of link."""
    if link not in KV_LINKS:
        raise ConfigError(f"kv link must be one of {', '.join(KV_LINKS)}, not {link!r}")
    env: dict[str, str] = {}
    if link != "auto":
        transports = _TRANSPORTS[link]
        if kv_buffer_device == "cuda":
            transports += "," + _CUDA_TRANSPORTS[link]
        env["UCX_TLS"] = transports
    if net_device:
        env["UCX_NET_DEVICES"] = net_device
    return env
