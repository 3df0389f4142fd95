"""`disagg up`: start a cluster from a cluster file, or `--local` on this host and keep it running until
Ctrl-C. Both run the same plan, pre-flight, start and health wait (deploy/cluster.py)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import httpx

from core.cluster_token import CLUSTER_TOKEN_ENV, read_token
from core.errors import ConfigError
from core.host import PLATFORMS
from core.settings_flags import add_flags, given_values, pairs_to_dict
from deploy import cluster_plan, local, signals
from deploy.cluster import Cluster, ClusterFailed, log_tail, watch
from node.settings import EngineSettings

log = logging.getLogger(__name__)
SAMPLE_PROMPT = "In one sentence, what is disaggregated prefill/decode serving?"
_LOCAL_FLAGS, _ENGINE_FLAGS = "_local_flags", "_engine_flags"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="start a cluster: from a cluster file (over ssh), or --local on this host",
                       description=(
                           "With a cluster FILE (TOML, see deploy/examples/): check every host, start the nodes "
                           "and the router on their hosts (over ssh, or directly for this machine), wait until "
                           "all are healthy, print the endpoint and return; components already running are not "
                           "started again; if any fails to come up, what was started is stopped. Stop it with "
                           "`disagg down FILE`. "
                           "With --local: the same for a one-host cluster on this machine, kept running until "
                           "Ctrl-C (or SIGTERM); if any process dies, everything is stopped; the two vLLM servers "
                           "are bound to different CPU cores. The options below, except --install, --dry-run, --platform and --model-config, are for --local."))
    p.add_argument("file", nargs="?", type=Path, help="cluster file (TOML); omit with --local")
    p.add_argument("--install", action="store_true",
                   help="with FILE: first install this disagg source and the right vLLM on every host "
                   "(deploy/install.sh there)")
    p.add_argument("--local", action="store_true", help="run every component on this host")
    p.add_argument("--dry-run", action="store_true",
                   help="print, per host, what would run (commands, vLLM command lines and environment with "
                   "secrets masked, ports, the transport and why) and the pre-flight checks; start nothing, "
                   "contact no host")
    p.add_argument("--platform", choices=sorted(PLATFORMS),
                   help="with --dry-run: build the nodes' vLLM command lines as on a host of this kind "
                   "(default: this machine's kind with --local; not shown for a cluster file)")
    p.add_argument("--model-config", type=Path, metavar="DIR",
                   help="with --dry-run: a local folder holding the model's config.json, when the cluster "
                   "file's model folder is not on this machine")
    local_flags = add_flags(p.add_argument_group("--local"), local.LocalOptions,
                            defaults={"run_dir": "~/.cache/disagg/logs/local"})
    engine_flags = add_flags(p.add_argument_group("--local: engine (both nodes; a cluster file's [engine])"),
                             EngineSettings)
    p.add_argument("--demo", action="store_true",
                   help="--local only: once up, send a sample chat request and print the answer")
    p.set_defaults(func=run_up, **{_LOCAL_FLAGS: local_flags, _ENGINE_FLAGS: engine_flags})
    add_cluster_parsers(sub)


def add_cluster_parsers(sub: argparse._SubParsersAction) -> None:
    """`down`, `status`, `logs` (cluster files), `host` (what they run on each host) and `kv-tier` (a KV
    tier's Redis server, which `up` starts)."""
    from deploy import cluster_cli, host_agent, kv_tier_server

    cluster_cli.add_parsers(sub)
    host_agent.add_parsers(sub)
    kv_tier_server.add_parsers(sub)


def run_up(args: argparse.Namespace) -> int:
    if (args.file is None) == (not args.local):
        raise ConfigError("disagg up: give a cluster FILE or --local (one of them)")
    given = {**given_values(args, getattr(args, _LOCAL_FLAGS)), **given_values(args, getattr(args, _ENGINE_FLAGS))}
    if args.file is not None:
        if given or args.demo:
            raise ConfigError(f"disagg up FILE: options of --local given ({', '.join(sorted(given) or ['demo'])}); "
                              "a cluster file sets them itself")
        from deploy import cluster_cli

        return cluster_cli.run_up_file(args)
    if args.dry_run:
        return _dry_run_local(options_from_args(args), args)
    return run_up_local(options_from_args(args), demo=args.demo)


def _dry_run_local(options: local.LocalOptions, args: argparse.Namespace) -> int:
    from core.host import detect_platform
    from deploy import dry_run

    platform = args.platform or next((name for name, p in PLATFORMS.items() if p.cuda == detect_platform().cuda))
    # as `up --local` runs it: with the fresh token it writes there
    print(dry_run.report(Cluster.of(local.spec(options, local.token_file_of(options))), platform, args.model_config))
    return 0


def options_from_args(args: argparse.Namespace) -> local.LocalOptions:
    """`up --local`'s options from its command line (defaults: the fields')."""
    values = given_values(args, getattr(args, _LOCAL_FLAGS))
    if "env" in values:
        values["env"] = pairs_to_dict(values["env"])
    engine = given_values(args, getattr(args, _ENGINE_FLAGS))
    return local.LocalOptions.build(**values, engine=engine)


def run_up_local(options: local.LocalOptions, demo: bool = False) -> int:
    """Run the local cluster until Ctrl-C/SIGTERM (0) or until a component exits (1; its log's tail is
    shown); everything is stopped either way. ConfigError (exit 2) when it cannot start."""
    signals.raise_on_sigterm()
    try:
        with local.running(options, _local_cluster_token()) as cluster:
            _announce(cluster)
            if demo:
                _demo(cluster)
            gone = watch(cluster)
            log.error("%s exited; stopping the cluster. Last lines of its log:\n%s", gone.name,
                      log_tail(cluster, gone))
            return 1
    except ClusterFailed as exc:
        log.error("cluster failed to start: %s", exc)
        return 1
    except KeyboardInterrupt:
        return 0


def _local_cluster_token() -> str | None:
    """$DISAGG_CLUSTER_TOKEN when set (to reach the nodes by hand), else None: a fresh one for this run."""
    token = read_token(None)
    if token:
        log.info("cluster token: from $%s (the nodes answer only requests that carry it)", CLUSTER_TOKEN_ENV)
        return token
    log.info("cluster token: a fresh one for this run; set $%s to call the nodes directly", CLUSTER_TOKEN_ENV)
    return None


def _model_name(cluster: Cluster) -> str:
    return cluster.spec.served_model_name or Path(cluster.spec.model).name


def _announce(cluster: Cluster) -> None:
    spec, name = cluster.spec, _model_name(cluster)
    print(f"{spec.mode} cluster ready: {cluster_plan.endpoint(spec)}/v1  (model: {name})")
    if spec.router.baseline_port:
        print(f"colocated baseline: {cluster_plan.endpoint(spec, spec.router.baseline_port)}/v1")
    print(f"try: curl {cluster_plan.endpoint(spec)}/v1/chat/completions -H 'Content-Type: application/json' "
          f"-d '{{\"model\": \"{name}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'")
    print("Ctrl-C stops everything.", flush=True)


def _demo(cluster: Cluster) -> None:
    body = {"model": _model_name(cluster), "messages": [{"role": "user", "content": SAMPLE_PROMPT}],
            "max_tokens": 48, "temperature": 0}
    resp = httpx.post(f"{cluster_plan.endpoint(cluster.spec)}/v1/chat/completions", json=body, timeout=300.0)
    if resp.status_code != 200:
        log.error("sample request failed: HTTP %d %s", resp.status_code, resp.text)
        return
    data = resp.json()
    print(f"sample request: {SAMPLE_PROMPT}")
    print(f"answer: {data['choices'][0]['message']['content'].strip()}")
    print(f"usage: {json.dumps(data.get('usage'))}; Server-Timing: {resp.headers.get('server-timing')}", flush=True)
