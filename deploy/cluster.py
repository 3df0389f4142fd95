"""A cluster from a cluster file: `up` (check, start over ssh, wait until healthy), `down`, `status`, `logs`.

Each component runs detached on its host, with its pid and log under the cluster's run folder there
(see deploy/host_agent.py), so `disagg up FILE` returns once the cluster is healthy and `disagg down FILE`
stops it later from any shell. `up` starts only what is not already running; if anything fails to come
up, it stops what it started.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from deploy import cluster_plan, preflight
from deploy.cluster_file import ClusterSpec
from deploy.cluster_plan import Component
from deploy.progress import StartupProgress
from deploy.remote import Host, HostError, hosts_of
from core.errors import ConfigError

log = logging.getLogger(__name__)
LIVENESS_INTERVAL_S = 5.0  # how often `up` asks the hosts whether the processes still run
STOP_GRACE_S = 40.0


class ClusterFailed(Exception):
    """A component died or did not become healthy in time (everything `up` started is stopped)."""


@dataclass(frozen=True)
class Cluster:
    spec: ClusterSpec
    hosts: dict[str, Host]
    components: tuple[Component, ...]

    @classmethod
    def of(cls, spec: ClusterSpec) -> "Cluster":
        return cls(spec, hosts_of(spec), tuple(cluster_plan.plan(spec)))

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
    if found.problems:
        raise ConfigError(f"cannot start cluster {cluster.spec.name!r}; nothing was started:\n  - "
                          + "\n  - ".join(found.problems))
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
        log.error("stopping what this `up` started")
        stop(cluster, started)
        raise
    return started


def wait_healthy(cluster: Cluster, timeout_s: float) -> None:
    progress = StartupProgress()
    started_s = last_liveness_s = time.monotonic()
    ready: set[str] = set()
    try:
        with httpx.Client(timeout=2.0) as client:
            while len(ready) < len(cluster.components):
                ready |= {c.name for c in cluster.components if c.name not in ready and _healthy(client, c.health_url)}
                elapsed_s = time.monotonic() - started_s
                progress(list(cluster.components), ready, elapsed_s)
                if len(ready) == len(cluster.components):
                    break
                if elapsed_s > timeout_s:
                    missing = ", ".join(c.name for c in cluster.components if c.name not in ready)
                    raise ClusterFailed(f"not healthy after {timeout_s:.0f} s: {missing}")
                if time.monotonic() - last_liveness_s >= LIVENESS_INTERVAL_S:
                    _raise_if_dead(cluster, [c for c in cluster.components if c.name not in ready])
                    last_liveness_s = time.monotonic()
                time.sleep(1.0)
    finally:
        progress.close()
    log.info("cluster %r healthy in %.1f s", cluster.spec.name, time.monotonic() - started_s)


def _healthy(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def _raise_if_dead(cluster: Cluster, components: list[Component]) -> None:
    """One `disagg host status` per host for all its components."""
    pids: dict[str, int | None] = {}
    for host_name in {c.host for c in components}:
        names = [arg for c in components if c.host == host_name for arg in ("--name", c.name)]
        answer = cluster.hosts[host_name].agent(["status", "--run-dir", cluster.spec.cluster_run_dir, *names],
                                                timeout_s=cluster.spec.ssh.connect_timeout_s + 60)
        pids.update({name: row["pid"] for name, row in answer["components"].items()})
    for component in components:
        if pids.get(component.name) is None:
            raise ClusterFailed(f"{component.name} on {cluster.host(component).where} exited while starting; "
                                f"last lines of its log:\n{log_tail(cluster, component)}")


def log_tail(cluster: Cluster, component: Component, num_lines: int = 20) -> str:
    host = cluster.host(component)
    argv = [*host.disagg, "host", "logs", "--run-dir", cluster.spec.cluster_run_dir, "--name", component.name,
            "--lines", str(num_lines)]
    try:
        return host.run(argv, timeout_s=30).stdout.decode(errors="replace")
    except HostError as exc:
        return f"(log not readable: {exc})"


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
