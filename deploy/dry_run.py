"""`disagg up FILE --dry-run`: what `up` would do, per host, without doing any of it (no ssh, no process).

For each host: the pre-flight checks `up` would make there (`deploy.preflight.describe`), then each component
it would start: the command run on that host (through ssh for a remote host), the addresses and ports it
listens on, and for a node the transport it would use and why, and the vLLM server's command line and
environment as `node.launch.resolve` builds them on a host of the kind `--platform` names (the node decides
on its own host at start; a dry run cannot look there). Secrets never appear: environment values whose name
says token, secret, key or password, and the cluster token, print as `***`.

Resolving a node's vLLM command reads the model's `config.json` (it sizes the KV): from `model` when that
folder exists on this machine, else from `--model-config DIR` (a local copy; the command shows the cluster
file's path). Without either, the vLLM part says so and the rest is printed.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import replace
from pathlib import Path

from core.errors import ConfigError
from decode_node.role import ROLE as DECODE
from core.host import PLATFORMS, Platform
from deploy import preflight
from deploy.cluster import Cluster
from deploy.cluster_plan import Component
from node.launch import NodeLaunch, resolve
from node.settings import NodeSettings
from prefill_node.role import ROLE as PREFILL
from transport import registry
from transport.base import LinkFacts

MASK = "***"
ROLES = {PREFILL.name: PREFILL, DECODE.name: DECODE}
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|KEY|CREDENTIAL", re.IGNORECASE)


def masked(env: dict[str, str]) -> dict[str, str]:
    """`env` with the value of every variable whose name looks secret replaced by `***`."""
    return {key: (MASK if SECRET_NAME.search(key) else value) for key, value in env.items()}


def report(cluster: Cluster, platform_name: str | None, model_config: Path | None = None) -> str:
    """The dry run's text: one section per host, in the order components start. ConfigError for an unknown
    platform name."""
    platform = PLATFORMS[platform_name] if platform_name else None
    if platform_name and platform is None:
        raise ConfigError(f"unknown --platform {platform_name!r}; known: {', '.join(PLATFORMS)}")
    spec = cluster.spec
    lines = [f"dry run of cluster {spec.name!r} (mode {spec.mode}, transport {spec.transport}, model {spec.model}):"
             " nothing is started, no host is contacted"]
    by_host: dict[str, list[Component]] = {}
    for component in cluster.components:
        by_host.setdefault(component.host, []).append(component)
    for host_name, components in by_host.items():
        host = cluster.hosts[host_name]
        lines += ["", f"host {host.where}"]
        lines += [f"  pre-flight: {check}" for check in preflight.describe(spec, host, components)]
        for component in components:
            lines += _component(cluster, component, platform, platform_name, model_config)
    lines += ["", "start order: " + ", ".join(c.name for c in cluster.components)
              + "; then `up` waits for every /health (ready_timeout_s "
              f"{spec.ready_timeout_s:g}) and stops what it started if one fails"]
    return "\n".join(lines)


def _component(cluster: Cluster, component: Component, platform: Platform | None, platform_name: str | None,
               model_config: Path | None) -> list[str]:
    host = cluster.host(component)
    args = _masked_args(component)
    start = [*host.disagg, "host", "start", "--run-dir", cluster.spec.cluster_run_dir, "--name", component.name,
             "--", *args]
    listens = ", ".join(f"{address}:{port} ({field})" for address, port, field in component.binds)
    lines = [f"  {component.name} ({component.role}): listens on {listens}; health {component.health_url}",
             f"    runs: {shlex.join(start)}"]
    if not host.is_local:
        lines.append(f"    through: {shlex.join(host.ssh_argv)} -- COMMAND")
    if component.settings is None:
        return lines
    if platform is None:
        return lines + [f"    transport: {_transport_without_platform(cluster, component)}",
                        "    vLLM: built by the node on its host at start (CUDA or not, RDMA devices); add "
                        f"--platform {{{','.join(PLATFORMS)}}} to print it for a host of that kind"]
    try:
        launch = _resolve(cluster, component, platform, model_config)
    except ConfigError as exc:
        return lines + [f"    vLLM on a {platform_name} host: cannot be built here: {exc}"]
    local_folder = str(launch.model_dir)
    command = [cluster.spec.model if part == local_folder else part for part in launch.vllm_command()]
    command[0] = "python"  # the node's interpreter on its host
    env = masked(launch.vllm_env({}))
    return lines + [
        f"    transport on a {platform_name} host: {launch.transport.name} ({launch.transport.reason})",
        f"    KV: {launch.geometry.kv_bytes_per_token:,} bytes per token, buffer on {launch.link.kv_buffer_device}",
        f"    vLLM on a {platform_name} host: {shlex.join(command)}",
        "    vLLM environment (added to the host's): "
        + (" ".join(f"{key}={shlex.quote(value)}" for key, value in sorted(env.items())) or "(nothing)")]


def _masked_args(component: Component) -> list[str]:
    """The component's arguments with secret environment values in its settings JSON masked."""
    if component.settings is None:
        return list(component.args)
    settings = json.loads(component.settings.to_json())
    settings["env"] = masked(settings.get("env") or {})
    return [*component.args[:-1], json.dumps(settings, separators=(",", ":"))]


def _resolve(cluster: Cluster, component: Component, platform: Platform, model_config: Path | None) -> NodeLaunch:
    """The node as `resolve` builds it on a `platform` host: the model folder from this machine (or
    `model_config`), no token file (the node's host reads it; here the token is only masked)."""
    update: dict[str, str | None] = {"cluster_token_file": None}
    if not (Path(cluster.spec.model).expanduser() / "config.json").is_file():
        if model_config is None:
            raise ConfigError(f"the model folder {cluster.spec.model} is not on this machine; give a local copy "
                              "of its config.json's folder with --model-config DIR")
        update["model"] = str(model_config)
    settings: NodeSettings = component.settings.model_copy(update=update)
    launch = resolve(settings, ROLES[component.role], platform, environ={})
    return replace(launch, cluster_token=MASK) if cluster.spec.token_file else launch


def _transport_without_platform(cluster: Cluster, component: Component) -> str:
    requested = component.settings.transport
    if requested != registry.AUTO:
        return f"{requested} (the cluster file's transport)"
    facts = LinkFacts(peer_host=component.settings.kv_peer, peer_is_local=False, rdma_devices=(), cuda=False)
    without_rdma = registry.choose(requested, facts)
    return (f"auto: decided on the host: nixl when it has an RDMA device (or the peer is on it), else "
            f"{without_rdma.name} ({without_rdma.reason})")
