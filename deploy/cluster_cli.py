"""`disagg up FILE`, `disagg down FILE`, `disagg status FILE`, `disagg logs FILE ROLE`."""

from __future__ import annotations

import argparse
import logging
import subprocess
from pathlib import Path

from deploy import cluster_file, cluster_plan, signals
from deploy.cluster import Cluster, ClusterFailed, status, stop, up
from core.errors import ConfigError

log = logging.getLogger(__name__)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    down = sub.add_parser("down", help="stop every component of a cluster file's cluster",
                          description="Stop the routers, then both nodes (each supervisor stops its vLLM "
                          "server; whatever is left is killed), on every host of the cluster file.")
    down.add_argument("file", type=Path, help="cluster file (TOML), see deploy/examples/")
    down.set_defaults(func=run_down)
    st = sub.add_parser("status", help="which components of a cluster file's cluster run and are healthy",
                        description="For each component: its host, pid and whether its /health answers. "
                        "Exit code 0 when every component is healthy, 1 otherwise.")
    st.add_argument("file", type=Path, help="cluster file (TOML)")
    st.set_defaults(func=run_status)
    logs = sub.add_parser("logs", help="print (or follow) one component's log from its host",
                          description="Print the last lines of a component's log, read on the host it runs on.")
    logs.add_argument("file", type=Path, help="cluster file (TOML)")
    logs.add_argument("role", metavar="COMPONENT",
                      help="which component: prefill, decode, router, baseline, kv-tier (several nodes: prefill-1, ...)")
    logs.add_argument("-n", "--lines", type=int, default=50, help="how many lines (default: 50)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until Ctrl-C")
    logs.set_defaults(func=run_logs)


def run_up_file(args: argparse.Namespace) -> int:
    cluster = Cluster.of(cluster_file.load(args.file))
    if args.dry_run:
        from deploy import dry_run

        print(dry_run.report(cluster, args.platform, args.model_config))
        return 0
    if cluster.spec.token_file is None:
        log.warning("%s sets no token_file: the nodes' vLLM servers and /info answer anyone who reaches them "
                    "(see deploy/README.md, \"The cluster token\")", args.file)
    if args.install:
        from deploy.installer import install

        install(cluster)
    signals.raise_on_sigterm()  # SIGTERM, like Ctrl-C, stops what this `up` started
    try:
        started = up(cluster)
    except ClusterFailed as exc:
        log.error("cluster %r failed to start: %s", cluster.spec.name, exc)
        return 1
    except KeyboardInterrupt:
        log.info("interrupted; what this `up` started was stopped")
        return 130
    spec = cluster.spec
    state = "ready" if started else "already running"
    transport = spec.transport if spec.mode == "disagg" else "none: colocated"
    print(f"cluster {spec.name!r} {state}: {cluster_plan.endpoint(spec)}/v1  (model: {spec.model}, "
          f"transport: {transport})")
    if spec.router.baseline_port:
        print(f"colocated baseline: {cluster_plan.endpoint(spec, spec.router.baseline_port)}/v1")
    print(f"stop it with: disagg down {args.file}", flush=True)
    return 0


def run_down(args: argparse.Namespace) -> int:
    cluster = Cluster.of(cluster_file.load(args.file))
    problems = stop(cluster, cluster.components)
    for problem in problems:
        log.error("%s", problem)
    print(f"cluster {cluster.spec.name!r} " + ("stopped" if not problems else "stopped with problems (see above)"))
    return 1 if problems else 0


def run_status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    cluster = Cluster.of(cluster_file.load(args.file))
    rows = status(cluster)
    table = Table(title=f"cluster {cluster.spec.name} ({args.file})")
    for column in ("component", "host", "pid", "health", "url"):
        table.add_column(column)
    for row in rows:
        health = "healthy" if row["healthy"] else ("not running" if row["pid"] is None else "not ready")
        table.add_row(row["component"], row["host"], str(row["pid"] or "-"), row["error"] or health, row["url"])
    Console().print(table)
    return 0 if all(row["healthy"] for row in rows) else 1


def run_logs(args: argparse.Namespace) -> int:
    cluster = Cluster.of(cluster_file.load(args.file))
    component = cluster.component(args.role)
    host = cluster.host(component)
    argv = [*host.disagg, "host", "logs", "--run-dir", cluster.spec.cluster_run_dir, "--name", component.name,
            "--lines", str(args.lines), *(["--follow"] if args.follow else [])]
    cmd = host.command(argv)
    if args.follow and not host.is_local:
        cmd.insert(1, "-t")  # a terminal there, so that Ctrl-C ends the remote tail too
    try:
        return subprocess.call(cmd)
    except FileNotFoundError as exc:
        raise ConfigError(f"{host.where}: cannot run {exc.filename}") from None
