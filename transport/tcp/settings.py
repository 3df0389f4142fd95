"""Settings of the TCP KV connector, read once from vLLM's `kv_connector_extra_config`.

Keys, all optional (units in the names):

- `host` ("127.0.0.1"): the address decode nodes reach this node's block server on; sent to them as
  `remote_host` in `kv_transfer_params`.
- `port` (5750): the block server's TCP port (prefill and `kv_both` nodes); sent as `remote_port`.
  0 binds any free port (tests only: the advertised port would be wrong).
- `bind_host` (= host): the address the block server binds, e.g. "0.0.0.0".
- `lease_s` (30): how long published blocks wait for a pull before they are freed.
- `connect_timeout_s` (5): decode side, opening the connection to the prefill node.
- `transfer_timeout_s` (30): both sides, one whole exchange (pull request, all blocks, release).
- `publish_wait_s` (10): prefill side, how long a pull for a request not published yet waits for it. The
  engine publishes a finished request one scheduler step after answering it (with async scheduling, after
  one more forward pass). Released and expired requests are refused at once.
- `max_concurrent_pulls` (2): decode side, pulls running at once.
- `wire_dtype` ("native"): decode side, the wire dtype this node's pulls ask for (`transport.tcp.wire_dtype`:
  native, bf16, fp16, int8) unless a request's `kv_transfer_params["kv_wire_dtype"]` names another; "auto"
  picks one per pull by the cost model of `transport.tcp.wire_choice` (needs `link_gbit_per_s`). The prefill
  side converts to whatever a pull asks for; this setting does not matter there.
- `link_gbit_per_s` (unset): decode side, the KV link's bandwidth in Gbit/s (10^9 bit/s), for "auto".
- `gil_switch_interval_s` (unset): if set, `sys.setswitchinterval` for the vLLM worker process. The
  transfer threads share the GIL with a worker thread that is busy whenever the engine steps; each
  blocking call then costs up to one interval (Python's default 5 ms) to get the GIL back.

From the vLLM server's environment, never from `kv_connector_extra_config` (which is on the command line):

- `DISAGG_CLUSTER_TOKEN` (unset): the cluster token. On a prefill node, every PULL and RELEASE must prove
  it (`transport.tcp.auth`); on a decode node, its pulls prove it. Unset on both sides: no check.
- `DISAGG_TCP_FAULT_FILE` (unset): TESTS ONLY, prefill side: the fault-injection file of
  `transport.tcp.faults`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from transport.tcp.auth import CLUSTER_TOKEN_ENV, normalize_token
from transport.tcp.faults import FAULT_FILE_ENV
from transport.tcp.wire_dtype import AUTO, parse

_FROM_ENVIRONMENT = ("cluster_token", "fault_file")


@dataclass(frozen=True)
class TcpConnectorSettings:
    """One node's TCP connector settings, validated when built."""

    host: str = "127.0.0.1"
    port: int = 5750
    bind_host: str | None = None
    lease_s: float = 30.0
    connect_timeout_s: float = 5.0
    transfer_timeout_s: float = 30.0
    publish_wait_s: float = 10.0
    max_concurrent_pulls: int = 2
    gil_switch_interval_s: float | None = None
    wire_dtype: str = "native"
    link_gbit_per_s: float | None = None
    cluster_token: bytes | None = field(default=None, repr=False)  # a secret: never logged
    fault_file: str | None = None  # tests only


    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("host must not be empty")
        if not 0 <= int(self.port) < 65536:
            raise ValueError(f"port {self.port} out of range")
        for name in ("lease_s", "connect_timeout_s", "transfer_timeout_s"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0, not {getattr(self, name)!r}")
        if float(self.publish_wait_s) < 0:
            raise ValueError(f"publish_wait_s must be >= 0, not {self.publish_wait_s!r}")
        if self.gil_switch_interval_s is not None and not 0 < float(self.gil_switch_interval_s) <= 0.1:
            raise ValueError(f"gil_switch_interval_s must be in (0, 0.1], not {self.gil_switch_interval_s!r}")
        if self.wire_dtype != AUTO:
            parse(self.wire_dtype)  # ValueError naming the known ones
        elif self.link_gbit_per_s is None:
            raise ValueError('wire_dtype "auto" needs link_gbit_per_s (the KV link\'s bandwidth)')
        if self.link_gbit_per_s is not None and not float(self.link_gbit_per_s) > 0:
            raise ValueError(f"link_gbit_per_s must be > 0, not {self.link_gbit_per_s!r}")
        if int(self.max_concurrent_pulls) < 1:
            raise ValueError(f"max_concurrent_pulls must be >= 1, not {self.max_concurrent_pulls!r}")

    @property
    def listen_host(self) -> str:
        return self.bind_host or self.host

    @property
    def link_bytes_per_s(self) -> float | None:
        return None if self.link_gbit_per_s is None else float(self.link_gbit_per_s) * 1e9 / 8

    @classmethod
    def from_extra_config(cls, extra: Mapping[str, Any] | None,
                          environ: Mapping[str, str] | None = None) -> TcpConnectorSettings:
        """Build from `kv_connector_extra_config` and the server's environment (the cluster token and the
        test-only fault file); unknown keys are an error (they are usually typos)."""
        extra = dict(extra or {})
        environ = environ or {}
        known = {f.name for f in fields(cls)} - set(_FROM_ENVIRONMENT)
        misplaced = sorted(set(extra) & set(_FROM_ENVIRONMENT))
        if misplaced:
            raise ValueError(f"kv_connector_extra_config must not carry {misplaced} (it is on the command line); "
                             f"set {CLUSTER_TOKEN_ENV} / {FAULT_FILE_ENV} in the server's environment")
        unknown = sorted(set(extra) - known)
        if unknown:
            raise ValueError(f"unknown kv_connector_extra_config keys {unknown}; known: {sorted(known)}")
        converted: dict[str, Any] = {}
        for key, value in extra.items():
            if key in ("port", "max_concurrent_pulls"):
                converted[key] = int(value)
            elif key.endswith("_s"):
                converted[key] = None if value is None else float(value)
            else:
                converted[key] = None if value is None else str(value)
        converted["cluster_token"] = normalize_token(environ.get(CLUSTER_TOKEN_ENV))
        converted["fault_file"] = environ.get(FAULT_FILE_ENV) or None
        return cls(**converted)
