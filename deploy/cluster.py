"""A cluster, from a cluster file or `up --local`: `up` (check every host, start, wait until healthy),
`watch`, `stop`, `status`.

Each component runs on its host with its pid and log under the cluster's run folder there (see
deploy/host_agent.py). A cluster made with `attached=False` (`disagg up FILE`) runs detached: `up` returns
once it is healthy and `disagg down FILE` stops it later from any shell, and `up` starts only what is not
already running. An attached cluster (`disagg up --local`, bench, the integration tests) runs on this
machine and dies with the process that started it; it refuses to adopt components already running.
If anything fails to come up, `up` stops what it started.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from deploy import cluster_plan, preflight, signals
from deploy.cluster_file import ClusterSpec
from deploy.cluster_plan import Component
from deploy.progress import StartupProgress
from deploy.remote import Host, HostError, hosts_of
from core.errors import ConfigError

log = logging.getLogger(__name__)
LIVENESS_INTERVAL_S = {True: 1.0, False: 5.0}  # how often to ask the hosts (all local: True) what still runs
STOP_GRACE_S = 40.0


class ClusterFailed(Exception):
    """A component died or did not become healthy in time (everything `up` started is stopped)."""


@dataclass(frozen=True)
class Cluster:
    """A spec, its hosts and its components in start order; `attached`: components on this machine die
    with this process (see the module docstring)."""

    spec: ClusterSpec
    hosts: dict[str, Host]
    components: tuple[Component, ...]
    attached: bool = False

    @classmethod
    def of(cls, spec: ClusterSpec, *, attached: bool = False) -> "Cluster":
        """The cluster `spec` describes; ConfigError when a node's settings are invalid."""
        return cls(spec, hosts_of(spec, attached=attached), tuple(cluster_plan.plan(spec)), attached)

    def host(self, component: Component) -> Host:
        return self.hosts[component.host]

    def component(self, name: str) -> Component:
        for c in self.components:
            if c.name == name:
                return c
        raise ConfigError(f"no component {name!r} in this cluster (it has {', '.join(self.names)})")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.components]

    def agent(self, component: Component, verb: str, *extra: str, timeout_s: float = 60.0) -> dict:
        args = [verb, "--run-dir", self.spec.cluster_run_dir, "--name", component.name, *extra]
        return self.host(component).agent(args, timeout_s=self.spec.ssh.connect_timeout_s + timeout_s)


def up(cluster: Cluster) -> list[Component]:
    """Start what is not running; return what was started. Raises ConfigError (nothing started) or
    ClusterFailed (what was started is stopped again)."""
    found = preflight.check(cluster.spec, cluster.hosts, list(cluster.components))
    for warning in found.warnings:
        log.warning("%s", warning)
    if found.problems:
        raise ConfigError(f"cannot start cluster {cluster.spec.name!r}; nothing was started:\n  - "
                          + "\n  - ".join(found.problems))
    if found.running and cluster.attached:
        running = ", ".join(f"{name} (pid {pid})" for name, pid in found.running.items())
        raise ConfigError(f"already running from {cluster.spec.cluster_run_dir}: {running}; nothing was started")
    for name, pid in found.running.items():
        log.info("%s already runs on %s (pid %d)", name, cluster.host(cluster.component(name)).where, pid)
    todo = [c for c in cluster.components if c.name not in found.running]
    started: list[Component] = []
    try:
        for component in todo:
            answer = cluster.agent(component, "start", "--", *component.args)
            if not answer["started"]:
                raise ClusterFailed(f"{component.name} on {cluster.host(component).where} exited at once "
                                    f"(code {answer.get('exit_code')}); {answer['log']}:\n{answer.get('log_tail', '')}")
            started.append(component)
            log.info("started %s on %s (pid %d, log %s)", component.name, cluster.host(component).where,
                     answer["pid"], answer["log"])
        wait_healthy(cluster, cluster.spec.ready_timeout_s)
    except BaseException:
        with signals.deferred():  # a second Ctrl-C must not cut the clean-up short
            log.error("stopping what this `up` started")
            stop(cluster, started)
        raise
    return started


def wait_healthy(cluster: Cluster, timeout_s: float) -> None:
    """Poll every component's health URL until all answer 200 (a router: once it sees every node of its own
    healthy, so the first requests can go to any of them), showing progress; ClusterFailed as soon as one has
    exited (asked of its host) or when `timeout_s` has passed."""
    progress = StartupProgress()
    started_s = last_liveness_s = time.monotonic()
    interval_s = LIVENESS_INTERVAL_S[all(host.is_local for host in cluster.hosts.values())]
    ready: set[str] = set()
    try:
        with httpx.Client(timeout=2.0) as client:
            while len(ready) < len(cluster.components):
                ready |= {c.name for c in cluster.components if c.name not in ready
                          and _healthy(client, c.health_url, every_node=True)}
                elapsed_s = time.monotonic() - started_s
                progress(list(cluster.components), ready, elapsed_s)
                if len(ready) == len(cluster.components):
                    break
                if elapsed_s > timeout_s:
                    missing = ", ".join(c.name for c in cluster.components if c.name not in ready)
                    raise ClusterFailed(f"not healthy after {timeout_s:.0f} s: {missing}")
                if time.monotonic() - last_liveness_s >= interval_s:
                    for component in exited(cluster, [c for c in cluster.components if c.name not in ready]):
                        raise ClusterFailed(f"{component.name} on {cluster.host(component).where} exited while "
                                            f"starting; last lines of its log:\n{log_tail(cluster, component)}")
                    last_liveness_s = time.monotonic()
                time.sleep(1.0)
    finally:
        progress.close()
    log.info("cluster %r healthy in %.1f s", cluster.spec.name, time.monotonic() - started_s)


def _healthy(client: httpx.Client, url: str, every_node: bool = False) -> bool:
    """200 from `url`; with `every_node`, also every node a router's /health lists is healthy (the router
    checks its nodes every few seconds: a node just ready may not be in its view yet)."""
    try:
        resp = client.get(url)
    except httpx.HTTPError:
        return False
    if resp.status_code != 200 or not every_node:
        return resp.status_code == 200
    try:
        body = resp.json()
    except ValueError:  # not a router: its 200 is enough
        return True
    nodes = body.get("nodes") if isinstance(body, dict) else None
    return not isinstance(nodes, list) or all(isinstance(n, dict) and n.get("healthy") for n in nodes)


def exited(cluster: Cluster, components: list[Component] | tuple[Component, ...]) -> list[Component]:
    """Those of `components` whose process no longer runs (one `disagg host status` per host)."""
    pids: dict[str, int | None] = {}
    for host_name in {c.host for c in components}:
        names = [arg for c in components if c.host == host_name for arg in ("--name", c.name)]
        answer = cluster.hosts[host_name].agent(["status", "--run-dir", cluster.spec.cluster_run_dir, *names],
                                                timeout_s=cluster.spec.ssh.connect_timeout_s + 60)
        pids.update({name: row["pid"] for name, row in answer["components"].items()})
    return [c for c in components if pids.get(c.name) is None]


def watch(cluster: Cluster) -> Component:
    """Block until a component of the running cluster exits; return it (Ctrl-C: KeyboardInterrupt)."""
    interval_s = LIVENESS_INTERVAL_S[all(host.is_local for host in cluster.hosts.values())]
    while True:
        gone = exited(cluster, cluster.components)
        if gone:
            return gone[0]
        time.sleep(interval_s)


def log_tail(cluster: Cluster, component: Component, num_lines: int = 20) -> str:
    """The last lines of a component's log, read on its host."""
    return cluster.host(component).log_tail(cluster.spec.cluster_run_dir, component.name, num_lines)


def stop(cluster: Cluster, components: list[Component] | tuple[Component, ...]) -> list[str]:
    """Stop routers first, then the nodes (both at once); return the problems (an unreachable host,
    processes left behind), each naming its host."""
    problems: list[str] = []

    def stop_one(component: Component) -> None:
        where = cluster.host(component).where
        try:
            answer = cluster.agent(component, "stop", "--grace-s", str(STOP_GRACE_S), timeout_s=STOP_GRACE_S + 30)
        except HostError as exc:
            problems.append(str(exc))
            return
        if answer["stopped"]:
            log.info("stopped %s on %s (pid %d)", component.name, where, answer["pid"])
        if answer["left"]:
            problems.append(f"{where}: {component.name} left processes {answer['left']}")

    routers = [c for c in components if not c.is_node]
    nodes = [c for c in components if c.is_node]
    for group in (routers, nodes):
        if group:
            with ThreadPoolExecutor(max_workers=len(group)) as pool:
                list(pool.map(stop_one, group))
    return problems


def status(cluster: Cluster) -> list[dict]:
    """One row per component: host, pid (None when not running), health."""
    rows = []
    with httpx.Client(timeout=3.0) as client:
        for c in cluster.components:
            try:
                pid = cluster.agent(c, "status")["components"][c.name]["pid"]
                error = None
            except HostError as exc:
                pid, error = None, str(exc)
            rows.append({"component": c.name, "host": cluster.host(c).where, "pid": pid,
                         "healthy": pid is not None and _healthy(client, c.health_url),
                         "url": c.health_url.removesuffix("/health"), "error": error})
    return rows
