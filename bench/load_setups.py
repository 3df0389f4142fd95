"""`bench compare --load`'s setups: the same host's cores served three ways, each a `disagg up --local` cluster
(deploy/local.py) started by the bench, one at a time, on free loopback ports, prefix caching off.

| name | what | cores (2-core host) |
|---|---|---|
| `disagg` | 1 prefill + 1 decode node (tcp transport), router with conditional disaggregation, load-aware | 0 / 1 |
| `disagg-always` | the same, every request prefilled remotely | 0 / 1 |
| `colocated` | one vLLM server given every node core (`--cores-per-node 2`) behind a colocated router | 0-1 |
| `colocated-dp` | two colocated replicas, one core each, behind a colocated router, load-aware (data parallel) | 0 / 1 |

Every setup has as many cores as the disaggregated pair (`cores` nodes x cores per node).
"""

from __future__ import annotations

import logging
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from bench.local_cluster import ClusterFailed, free_ports
from core.errors import ConfigError
from deploy import local
from node.settings import EngineSettings

log = logging.getLogger(__name__)
__all__ = ["ClusterFailed", "SETUPS", "DEFAULT_SETUPS", "LocalSetup", "started"]


@dataclass(frozen=True)
class LocalSetup:
    """One way to serve: `up --local` options (besides ports, model, engine) and what it is, for the report."""

    name: str
    description: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def num_nodes(self) -> tuple[int, int]:
        """(prefill nodes, decode nodes)."""
        prefill = self.options.get("prefill_nodes", 1) if self.options.get("mode", "disagg") == "disagg" else 0
        return prefill, self.options.get("decode_nodes", 1)


_DISAGG = {"mode": "disagg", "transport": "tcp", "prefill_policy": "load_aware", "decode_policy": "load_aware"}
SETUPS: dict[str, LocalSetup] = {s.name: s for s in (
    LocalSetup("disagg", "disaggregated: 1 prefill node (core 0) + 1 decode node (core 1), tcp transport, "
               "conditional disaggregation (router/decider.py), load-aware routing",
               {**_DISAGG, "disagg_policy": "conditional"}),
    LocalSetup("disagg-always", "disaggregated as `disagg`, every request prefilled on the prefill node",
               {**_DISAGG, "disagg_policy": "always"}),
    LocalSetup("colocated", "colocated: one vLLM server bound to cores 0-1 behind a colocated router",
               {"mode": "colocated", "decode_nodes": 1, "cores_per_node": 2}),
    LocalSetup("colocated-dp", "colocated, data parallel: 2 replicas (cores 0 and 1) behind a colocated router, "
               "load-aware", {"mode": "colocated", "decode_nodes": 2, "decode_policy": "load_aware"}),
)}
DEFAULT_SETUPS = ("disagg", "colocated", "colocated-dp")


@contextmanager
def started(setup: LocalSetup, model_dir: Path, max_model_len: int, log_dir: Path,
            ready_timeout_s: float = 600.0) -> Iterator[str]:
    """Start `setup`'s cluster, yield its router URL once healthy, stop it on exit; ClusterFailed when it does
    not start (its message holds the failing component's log tail)."""
    num_prefill, num_decode = setup.num_nodes
    base = free_ports(2 * (num_prefill + num_decode))  # vLLM + /info port per node
    options = local.LocalOptions.build(
        model=str(model_dir), port=free_ports(1), prefill_port=base, decode_port=base + 2 * num_prefill,
        kv_port_base=free_ports(num_prefill + num_decode + 1), run_dir=str(log_dir), ready_timeout_s=ready_timeout_s,
        engine=EngineSettings(max_model_len=max_model_len, prefix_caching=False), **setup.options)
    log.info("starting %s: %s (logs in %s)", setup.name, setup.description, log_dir)
    with ExitStack() as stack:
        try:
            stack.enter_context(local.running(options))
        except ConfigError as exc:  # pre-flight: e.g. a port taken since it was picked
            raise ClusterFailed(str(exc)) from None
        yield f"http://127.0.0.1:{options.port}"
