"""From a cluster file to the components to run: which host, which `disagg` arguments, which ports,
which health URL. The nodes get their HTTP address as bind address (the router calls it) and their KV
address as `--kv-host` (the other node pulls from it; `--kv-bind-host` when the host sets `kv_bind`); the
host's `env` goes to its vLLM server. With a `token_file`, every node and router gets
`--cluster-token-file` (the path, read on the host it runs on)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from deploy.cluster_file import LOCAL, ClusterSpec, NodeSpec


@dataclass(frozen=True)
class Component:
    name: str  # prefill | decode | router | baseline
    host: str  # a host name in the file, or "local"
    args: tuple[str, ...]  # `disagg` arguments
    address: str  # where the launching machine reaches its HTTP server
    binds: tuple[tuple[str, int, str], ...]  # (address, port, the cluster-file field that set the port)
    health_port: int

    @property
    def health_url(self) -> str:
        return f"http://{_url_host(self.address)}:{self.health_port}/health"

    @property
    def is_node(self) -> bool:
        return self.name in ("prefill", "decode")


def plan(spec: ClusterSpec) -> list[Component]:
    """Components in start order: nodes, then routers (stopped in reverse)."""
    prefill, decode = _node(spec, "prefill"), _node(spec, "decode")
    prefill_url = f"http://{_url_host(prefill.address)}:{spec.prefill.info_port}"
    decode_url = f"http://{_url_host(decode.address)}:{spec.decode.info_port}"
    bind, reach, token = router_address(spec), _router_reach(spec), _token_args(spec)
    components = [prefill, decode, Component(
        name="router", host=spec.router.host, address=reach, binds=((bind, spec.router.port, "router.port"),),
        health_port=spec.router.port,
        args=("router", "--mode", "disagg", "--prefill", prefill_url, "--decode", decode_url,
              "--host", bind, "--port", str(spec.router.port), *token))]
    if spec.router.baseline_port is not None:
        port = spec.router.baseline_port
        components.append(Component(
            name="baseline", host=spec.router.host, address=reach, binds=((bind, port, "router.baseline_port"),),
            health_port=port,
            args=("router", "--mode", "colocated", "--decode", decode_url, "--host", bind, "--port", str(port),
                  *token)))
    return components


def _token_args(spec: ClusterSpec) -> tuple[str, ...]:
    return ("--cluster-token-file", spec.token_file) if spec.token_file else ()


def router_address(spec: ClusterSpec) -> str:
    if spec.router.bind:
        return spec.router.bind
    return "127.0.0.1" if spec.router.host == LOCAL else spec.hosts[spec.router.host].address


def _router_reach(spec: ClusterSpec) -> str:
    """Where the launching machine reaches the router (not 0.0.0.0 when it binds every interface)."""
    address = router_address(spec)
    if address in ("0.0.0.0", "::"):
        address = "127.0.0.1" if spec.router.host == LOCAL else spec.hosts[spec.router.host].address
    return address


def endpoint(spec: ClusterSpec, port: int | None = None) -> str:
    """The router's URL as clients on the launching machine reach it."""
    return f"http://{_url_host(_router_reach(spec))}:{port or spec.router.port}"


def _node(spec: ClusterSpec, role: str) -> Component:
    node: NodeSpec = getattr(spec, role)
    peer: NodeSpec = spec.decode if role == "prefill" else spec.prefill
    host, peer_host = spec.hosts[node.host], spec.hosts[peer.host]
    engine = spec.engine
    args = [role, "--model", spec.model, "--transport", spec.transport, "--kv-peer", peer_host.kv,
            "--host", host.address, "--port", str(node.port), "--info-port", str(node.info_port),
            "--kv-host", host.kv, "--kv-port", str(node.kv_port), "--kv-lease-s", str(engine.kv_lease_s),
            "--kv-transfer-timeout-s", str(engine.kv_transfer_timeout_s),
            "--kv-buffer-device", engine.kv_buffer_device, "--kv-cache-gib", str(engine.kv_cache_gib),
            "--max-model-len", str(engine.max_model_len), *_token_args(spec)]
    if host.kv_bind:
        args += ["--kv-bind-host", host.kv_bind]
    if spec.served_model_name:
        args += ["--served-model-name", spec.served_model_name]
    if node.cpu_cores:
        args += ["--cpu-cores", node.cpu_cores]
    if engine.dtype:
        args += ["--dtype", engine.dtype]
    if not engine.prefix_caching:
        args.append("--no-prefix-caching")
    for key, value in sorted(host.env.items()):
        args += ["--env", f"{key}={value}"]
    if engine.vllm_args:
        args += ["--vllm-args", json.dumps(list(engine.vllm_args))]
    binds = ((host.address, node.port, f"{role}.port"), (host.address, node.info_port, f"{role}.info_port"),
             (host.kv_bind_address, node.kv_port, f"{role}.kv_port"))
    return Component(name=role, host=node.host, args=tuple(args), address=host.address, binds=binds,
                     health_port=node.info_port)


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address
