"""From a cluster spec to the components to run: which host, which `disagg` arguments, which ports, which
health URL.

A node's command is `disagg ROLE --settings JSON`: its whole `node.settings.NodeSettings`, built here once
from the spec. A node gets its host's HTTP address as bind address (the router calls it), its host's KV
address as `kv_host` (the other nodes pull from it; `kv_bind_host` when the host sets `kv_bind`), the
first node of the other role's KV address as `kv_peer` (what `transport = "auto"` judges), its host's
`env` (for its vLLM server), the `[engine]` settings and, with a `token_file`, that path as
`cluster_token_file`. Routers get `--cluster-token-file`. A cluster without prefill nodes is colocated:
its decode nodes run without a KV transport and its router in colocated mode. A cluster with a KV tier gives
every prefill node the tier's settings, and a redis tier without a `url` is a `kv-tier` component (started
first, stopped with the routers: deploy/cluster_kv_tier.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deploy.cluster_file import LOCAL, ClusterSpec, NodeSpec
from deploy.host_spec import HostSpec
from deploy.cluster_kv_tier import node_engine
from deploy.kv_tier_server import KvTierServerSettings
from node.settings import NodeSettings

KV_TIER = "kv-tier"  # the tier's component name and role


@dataclass(frozen=True)
class Component:
    """One process of a cluster.

    `name`: unique in the cluster (`prefill`, `decode-2`, `router`, `baseline`, `kv-tier`); `role`: `prefill`,
    `decode`, `router`, `baseline` or `kv-tier`; `host`: a host name of the spec, or "local"; `args`: its `disagg`
    arguments; `address`: where the launching machine reaches its HTTP server; `binds`: (address, port,
    the cluster-file field that set the port) for every port it listens on; `settings`: a node's settings
    (what `args` carries as JSON), None for a router.
    """

    name: str
    host: str
    args: tuple[str, ...]
    address: str
    binds: tuple[tuple[str, int, str], ...]
    health_port: int
    role: str
    settings: NodeSettings | None = field(default=None, compare=True, repr=False)

    @property
    def health_url(self) -> str:
        return f"http://{_url_host(self.address)}:{self.health_port}/health"

    @property
    def is_node(self) -> bool:
        return self.role in ("prefill", "decode")


def plan(spec: ClusterSpec) -> list[Component]:
    """Components in start order: the KV tier's server (if `up` runs one), nodes (prefill first), then routers
    (stopped in reverse)."""
    tier = [_kv_tier(spec)] if spec.kv_tier_host is not None else []
    nodes = [_node(spec, name, role, node) for name, role, node in spec.nodes()]
    urls = {"prefill": [], "decode": []}
    for component, (_, role, node) in zip(nodes, spec.nodes()):
        urls[role] += [f"--{role}", f"http://{_url_host(component.address)}:{node.info_port}"]
    routers = [_router(spec, "router", spec.router.port, spec.mode,
                       (*urls["prefill"], *urls["decode"]))]
    if spec.router.baseline_port is not None:
        routers.append(_router(spec, "baseline", spec.router.baseline_port, "colocated", tuple(urls["decode"])))
    return [*tier, *nodes, *routers]


def _kv_tier(spec: ClusterSpec) -> Component:
    """The Redis server of the cluster's KV tier, on its host (`disagg kv-tier`)."""
    assert spec.tier is not None and spec.kv_tier_host is not None
    name, tier = spec.kv_tier_host, spec.tier
    address = spec.hosts[name].address
    settings = KvTierServerSettings(host=address, port=tier.port, health_port=tier.health_port,
                                    max_bytes=tier.max_bytes, cluster_token_file=spec.token_file)
    return Component(name=KV_TIER, role=KV_TIER, host=name, args=(KV_TIER, "--settings", settings.to_json()),
                     address=address, binds=((address, tier.port, "kv_tier.port"),
                                              (address, tier.health_port, "kv_tier.health_port")),
                     health_port=tier.health_port)


def kv_tier_url(spec: ClusterSpec) -> str | None:
    """The URL of the Redis server `up` runs for the tier (None: it runs none)."""
    if spec.tier is None or spec.kv_tier_host is None:
        return None
    return f"redis://{_url_host(spec.hosts[spec.kv_tier_host].address)}:{spec.tier.port}/0"


def _router(spec: ClusterSpec, name: str, port: int, mode: str, node_urls: tuple[str, ...]) -> Component:
    bind = router_address(spec)
    token = ("--cluster-token-file", spec.token_file) if spec.token_file else ()
    field_name = "router.port" if name == "router" else "router.baseline_port"
    return Component(name=name, role=name, host=spec.router.host, address=_router_reach(spec),
                     binds=((bind, port, field_name),), health_port=port,
                     args=("router", "--mode", mode, *node_urls, "--host", bind, "--port", str(port), *token,
                           *spec.router.policy_args(mode)))


def router_address(spec: ClusterSpec) -> str:
    """The address the routers bind."""
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


def node_settings(spec: ClusterSpec, role: str, node: NodeSpec) -> NodeSettings:
    """One node's settings, as its process gets them; ConfigError names the field."""
    host = spec.hosts[node.host]
    peers = spec.decode if role == "prefill" else spec.prefill
    engine = spec.engine
    if role == "prefill":
        engine = node_engine(engine, spec.tier, kv_tier_url(spec), token_auth=spec.token_file is not None)
    values = dict(role=role, model=spec.model, served_model_name=spec.served_model_name,
                  transport=spec.transport if spec.prefill else "none", host=host.address, port=node.port,
                  info_port=node.info_port, kv_host=host.kv, kv_bind_host=host.kv_bind, kv_port=node.kv_port,
                  cpu_cores=node.cpu_cores, env=dict(host.env), cluster_token_file=spec.token_file,
                  engine=engine)
    if peers:
        values["kv_peer"] = spec.hosts[peers[0].host].kv
    return NodeSettings.build(**{k: v for k, v in values.items() if v is not None})


def _node(spec: ClusterSpec, name: str, role: str, node: NodeSpec) -> Component:
    host: HostSpec = spec.hosts[node.host]
    settings = node_settings(spec, role, node)
    binds = ((host.address, node.port, f"{name}.port"), (host.address, node.info_port, f"{name}.info_port"),
             (host.kv_bind_address, node.kv_port, f"{name}.kv_port"))
    return Component(name=name, role=role, host=node.host, args=(role, "--settings", settings.to_json()),
                     address=host.address, binds=binds, health_port=node.info_port, settings=settings)


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address
