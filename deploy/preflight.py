"""Checks before `disagg up` (a cluster file or --local) starts anything: every host answers, runs the same
disagg as this machine, node hosts have a supported vLLM (the same on all of them) and the model folder,
every address is the host's own, every port is free and, with a `token_file`, that file holds a token (the
same on every host) readable by its owner only. All problems are collected and reported together, each
naming its host; components already running (a second `up`) are reported as such, and their ports are not
busy. A port inside the host's ephemeral range is a warning, not a problem (it works until an outgoing
connection holds it while its component restarts)."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata

from deploy.cluster_file import ClusterSpec
from deploy.cluster_plan import Component
from deploy.host_agent import source_fingerprint
from deploy.remote import Host, HostError

log = logging.getLogger(__name__)


@dataclass
class Preflight:
    problems: list[str] = field(default_factory=list)
    running: dict[str, int] = field(default_factory=dict)  # component name -> pid
    warnings: list[str] = field(default_factory=list)  # worth saying; nothing stops the start


def check(spec: ClusterSpec, hosts: dict[str, Host], components: list[Component]) -> Preflight:
    """Ask every host at once; return what is wrong and what already runs."""
    by_host: dict[str, list[Component]] = {}
    for component in components:
        by_host.setdefault(component.host, []).append(component)
    result = Preflight()
    with ThreadPoolExecutor(max_workers=len(by_host)) as pool:
        futures = {name: pool.submit(_ask, spec, hosts[name], comps) for name, comps in by_host.items()}
    reports = {}
    for name, future in futures.items():
        try:
            reports[name] = future.result()
        except HostError as exc:
            result.problems.append(str(exc))
    for name, report in reports.items():
        result.running.update(report["running"])
        result.problems += _problems(spec, hosts[name], by_host[name], report)
        result.warnings += _ephemeral_port_warnings(hosts[name].where, by_host[name], report)
    result.problems += _vllm_mismatch(spec, reports)
    result.problems += _token_mismatch(spec, hosts, reports)
    return result


def _ask(spec: ClusterSpec, host: Host, components: list[Component]) -> dict:
    args = ["check", "--run-dir", spec.cluster_run_dir]
    addresses = {address for c in components for address, _, _ in c.binds} - {"0.0.0.0", "::"}
    for address in sorted(addresses):
        args += ["--address", address]
    for c in components:
        args += ["--name", c.name] + [f"--port={address}:{port}" for address, port, _ in c.binds]
    if any(c.is_node for c in components):
        args += ["--engine", "--model", spec.model]
    if spec.token_file:
        args += ["--token-file", spec.token_file]
    return host.agent(args, timeout_s=spec.ssh.connect_timeout_s + 60)


def _problems(spec: ClusterSpec, host: Host, components: list[Component], report: dict) -> list[str]:
    where, problems = host.where, []
    mine = (metadata.version("disagg"), source_fingerprint())
    theirs = (report["disagg"], report["source"])
    if theirs != mine:
        problems.append(f"{where}: disagg {theirs[0]} (source {theirs[1]}) differs from this machine's "
                        f"{mine[0]} (source {mine[1]}); install the same disagg on every host "
                        "(`disagg up FILE --install`)")
    if any(c.is_node for c in components):
        problems += _engine_problems(where, report)
    problems += _token_problems(spec, where, report)
    for address, problem in report["addresses"].items():
        if problem:
            problems.append(f"{where}: {problem}")
    busy = set(report["busy_ports"])
    for c in components:
        if c.name in report["running"]:
            continue
        for address, port, field_name in c.binds:
            if f"{address}:{port}" in busy:
                problems.append(f"{where}: port {port} on {address} ({field_name}) is already in use")
    return problems


def _ephemeral_port_warnings(where: str, components: list[Component], report: dict) -> list[str]:
    """Ports inside the host's ephemeral range: an outgoing connection may hold one as its local end while
    the component is down, and its restart (after a crash, by its supervisor) then cannot bind it."""
    low, high = report.get("ephemeral_ports") or (0, -1)  # an agent that does not say: nothing to warn about
    return [f"{where}: port {port} on {address} ({field_name}) lies in the kernel's ephemeral port range "
            f"{low}-{high} (net.ipv4.ip_local_port_range): an outgoing connection may take it while "
            f"{c.name} is down, and a restart then fails to bind it; a port below {low} avoids that"
            for c in components if c.name not in report["running"]
            for address, port, field_name in c.binds if low <= port <= high]


def _engine_problems(where: str, report: dict) -> list[str]:
    if report["vllm"] is None:
        return [f"{where}: vLLM is not installed (disagg needs vllm {report['vllm_range']}: run deploy/install.sh "
                "there, or `disagg up FILE --install`)"]
    problems = []
    if report["vllm_supported"] is False:
        problems.append(f"{where}: vLLM {report['vllm']} is outside the range disagg supports ({report['vllm_range']})")
    model = report.get("model")
    if model and not model["ok"]:
        problems.append(f"{where}: model folder {model['path']} not found (no config.json there)")
    return problems


def _token_problems(spec: ClusterSpec, where: str, report: dict) -> list[str]:
    if not spec.token_file:
        return []
    token_file = report["token_file"]
    hint = {"not found": "; put the cluster's token there, the same on every host (deploy/README.md)"}
    return [f"{where}: token_file {token_file['path']}: {problem}{hint.get(problem, '')}"
            for problem in token_file["problems"]]


def _token_mismatch(spec: ClusterSpec, hosts: dict[str, Host], reports: dict[str, dict]) -> list[str]:
    """Hosts whose token files hold different tokens (the nodes would refuse the router, and each other)."""
    if not spec.token_file:
        return []
    groups: dict[str, list[str]] = {}
    for name, report in reports.items():
        if report["token_file"]["fingerprint"]:
            groups.setdefault(report["token_file"]["fingerprint"], []).append(hosts[name].where)
    if len(groups) < 2:
        return []
    described = "; ".join(", ".join(sorted(wheres)) for wheres in sorted(groups.values()))
    return [f"token_file {spec.token_file} holds different tokens on the hosts (one token per group: {described}); "
            "copy one token to every host"]


def _vllm_mismatch(spec: ClusterSpec, reports: dict[str, dict]) -> list[str]:
    """Node hosts with different vLLM versions (the KV connector API changes between releases)."""
    node_hosts = list(dict.fromkeys(node.host for _, _, node in spec.nodes()))
    versions = {host: reports.get(host, {}).get("vllm") for host in node_hosts}
    if None in versions.values() or len(set(versions.values())) < 2:
        return []
    described = ", ".join(f"{host} has {version}" for host, version in versions.items())
    return [f"vLLM differs between the nodes: {described} (the KV connector API changes between releases)"]


def describe(spec: ClusterSpec, host: Host, components: list[Component]) -> list[str]:
    """In words, the checks `check` makes on `host` for `components` (what `up --dry-run` prints)."""
    checks = [f"{'this machine' if host.is_local else 'reachable over ssh and'} runs the "
              f"same disagg as this machine ({metadata.version('disagg')}, source {source_fingerprint()})"]
    addresses = sorted({address for c in components for address, _, _ in c.binds} - {"0.0.0.0", "::"})
    if addresses:
        checks.append(f"addresses {', '.join(addresses)} are this host's own")
    ports = [f"{address}:{port} ({field_name})" for c in components for address, port, field_name in c.binds]
    checks.append(f"ports free (unless the component already runs, from {spec.cluster_run_dir}), a warning for "
                  f"any in the host's ephemeral port range: {', '.join(ports)}")
    if any(c.is_node for c in components):
        checks.append(f"vLLM installed, in disagg's supported range, the same version on every node host; "
                      f"model folder {spec.model} holds a config.json")
    if spec.token_file:
        checks.append(f"token file {spec.token_file} holds a token, readable by its owner only, the same on "
                      "every host")
    return checks
