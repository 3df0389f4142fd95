"""`disagg up`: start a cluster and keep it running until Ctrl-C."""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import time
from pathlib import Path

import httpx

from deploy import local
from deploy.processes import ManagedProcess, stop_all
from deploy.progress import StartupProgress
from core import model
from core.cluster_token import CLUSTER_TOKEN_ENV, read_token
from core.errors import ConfigError

log = logging.getLogger(__name__)
SAMPLE_PROMPT = "In one sentence, what is disaggregated prefill/decode serving?"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="start a cluster: from a cluster file (over ssh), or --local on this host",
                       description=(
                           "With a cluster FILE (TOML, see deploy/examples/): check every host, start the prefill "
                           "node, the decode node and the router on their hosts (over ssh, or directly for this "
                           "machine), wait until all are healthy, print the endpoint and return; components "
                           "already running are not started again; if any fails to come up, what was started "
                           "is stopped. Stop it with `disagg down FILE`. "
                           "With --local: run every component on this host and keep it running until Ctrl-C "
                           "(or SIGTERM); if any process dies, everything is stopped; the two vLLM servers are "
                           "bound to different CPU cores. The options below, except --install, are for --local."))
    _add_file_arguments(p)
    p.add_argument("--local", action="store_true", help="run every component on this host")
    p.add_argument("--mode", choices=["disagg", "colocated"], default="disagg",
                   help="disagg: prefill node + decode node; colocated: one node (the baseline) (default: disagg)")
    p.add_argument("--model", help=f"local Hugging Face model folder (default: {model.default_model_dir()})")
    p.add_argument("--transport", choices=["nixl", "tcp", "auto"], default="nixl",
                   help="KV transport between the nodes; auto picks nixl when NIXL is installed (default: nixl)")
    p.add_argument("--port", type=int, default=8000, help="router port (default: 8000)")
    p.add_argument("--baseline-port", type=int, default=None,
                   help="also serve a colocated baseline router on this port, using the decode node")
    p.add_argument("--prefill-port", type=int, default=8100,
                   help="prefill vLLM port; its /info is on the next port (default: 8100)")
    p.add_argument("--decode-port", type=int, default=8200,
                   help="decode vLLM port; its /info is on the next port (default: 8200)")
    p.add_argument("--kv-port-base", type=int, default=5601,
                   help="KV side-channel ports: this for prefill, +1 for decode (default: 5601)")
    p.add_argument("--max-model-len", type=int, default=2048, help="context length (default: 2048)")
    p.add_argument("--no-prefix-caching", action="store_true", help="disable vLLM's prefix cache on the nodes")
    p.add_argument("--kv-lease-s", type=float, default=30.0,
                   help="seconds the prefill node keeps KV blocks nobody pulls (default: 30)")
    p.add_argument("--kv-transfer-timeout-s", type=float, default=30.0,
                   help="tcp transport: seconds a KV pull may take before the decode node recomputes (default: 30)")
    p.add_argument("--restart-on-crash", type=int, default=0, metavar="N",
                   help="--local: each node restarts a vLLM server that dies, up to N times (default: 0: a dead "
                   "server stops the cluster)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for both vLLM servers, e.g. UCX_TLS=tcp (repeatable)")
    p.add_argument("--log-dir", type=Path, default=local.LocalClusterConfig.__dataclass_fields__["log_dir"].default,
                   help="where each process writes its log (default: ~/.cache/disagg/logs/local)")
    p.add_argument("--ready-timeout-s", type=float, default=600.0, help="give up starting after this (default: 600)")
    p.add_argument("--demo", action="store_true", help="once up, send a sample chat request and print the answer")
    p.set_defaults(func=run_up)
    add_cluster_parsers(sub)


def _add_file_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", type=Path, help="cluster file (TOML); omit with --local")
    p.add_argument("--install", action="store_true",
                   help="with FILE: first install this disagg source and the right vLLM on every host "
                   "(deploy/install.sh there)")


def add_cluster_parsers(sub: argparse._SubParsersAction) -> None:
    """`down`, `status`, `logs` (cluster files) and `host` (what they run on each host)."""
    from deploy import cluster_cli, host_agent

    cluster_cli.add_parsers(sub)
    host_agent.add_parsers(sub)


def run_up(args: argparse.Namespace) -> int:
    if (args.file is None) == (not args.local):
        raise ConfigError("disagg up: give a cluster FILE or --local (one of them)")
    if args.file is not None:
        from deploy import cluster_cli

        return cluster_cli.run_up_file(args)
    return _run_up_local(args)


def _run_up_local(args: argparse.Namespace) -> int:
    config = local.LocalClusterConfig(
        model_dir=model.resolve_model(args.model), mode=args.mode, transport=args.transport,
        router_port=args.port, baseline_port=args.baseline_port, prefill_port=args.prefill_port,
        decode_port=args.decode_port, kv_port_base=args.kv_port_base, max_model_len=args.max_model_len,
        prefix_caching=not args.no_prefix_caching, log_dir=args.log_dir, ready_timeout_s=args.ready_timeout_s,
        node_env=tuple(args.env), kv_lease_s=args.kv_lease_s, kv_transfer_timeout_s=args.kv_transfer_timeout_s,
        restart_on_crash=args.restart_on_crash, cluster_token=_local_cluster_token())
    busy = local.ports_in_use(config)
    if busy:
        raise ConfigError(f"ports already in use: {busy}; is a cluster already running? (disagg up starts nothing)")
    procs = local.plan(config)
    local.raise_on_sigterm()
    try:
        for proc in procs:
            proc.start()
        log.info("starting %s; logs in %s", ", ".join(p.name for p in procs), config.log_dir)
        if not _wait(procs, config):
            return 1
        _announce(config, procs)
        if args.demo:
            _demo(config)
        return local.supervise(procs)
    except KeyboardInterrupt:
        log.info("stopping the cluster")
        return 0
    finally:
        local.ignore_stop_signals()  # a second Ctrl-C or SIGTERM must not cut the clean-up short
        stop_all(procs)


def _local_cluster_token() -> str:
    """$DISAGG_CLUSTER_TOKEN when set (to reach the nodes by hand), else a fresh one for this run."""
    token = read_token(None)
    if token:
        log.info("cluster token: from $%s (the nodes answer only requests that carry it)", CLUSTER_TOKEN_ENV)
        return token
    log.info("cluster token: a fresh one for this run; set $%s to call the nodes directly", CLUSTER_TOKEN_ENV)
    return secrets.token_hex(32)


def _wait(procs: list[ManagedProcess], config: local.LocalClusterConfig) -> bool:
    progress = StartupProgress()
    started_s = time.monotonic()
    try:
        local.wait_healthy(procs, config.ready_timeout_s, progress)
    except local.ClusterFailed as exc:
        log.error("cluster failed to start: %s", exc)
        return False
    finally:
        progress.close()
    log.info("cluster ready in %.1f s", time.monotonic() - started_s)
    _record_engine_pids(procs)
    return True


def _record_engine_pids(procs: list[ManagedProcess]) -> None:
    """Remember each node's vLLM process group so that stopping is complete even if a node hangs."""
    for proc in procs:
        if proc.name in ("prefill", "decode"):
            try:
                pid = httpx.get(proc.health_url.replace("/health", "/info"), timeout=2.0).json().get("pid")
            except (httpx.HTTPError, ValueError):
                continue
            if isinstance(pid, int):
                proc.extra_pgids.add(pid)


def _announce(config: local.LocalClusterConfig, procs: list[ManagedProcess]) -> None:
    print(f"{config.mode} cluster ready: {config.router_url}/v1  (model: {config.model_dir.name})")
    if config.baseline_port:
        print(f"colocated baseline: http://127.0.0.1:{config.baseline_port}/v1")
    print(f"try: curl {config.router_url}/v1/chat/completions -H 'Content-Type: application/json' "
          f"-d '{{\"model\": \"{config.model_dir.name}\", \"messages\": [{{\"role\": \"user\", "
          f"\"content\": \"Hello\"}}]}}'")
    print("Ctrl-C stops everything.", flush=True)


def _demo(config: local.LocalClusterConfig) -> None:
    body = {"model": config.model_dir.name, "messages": [{"role": "user", "content": SAMPLE_PROMPT}],
            "max_tokens": 48, "temperature": 0}
    resp = httpx.post(f"{config.router_url}/v1/chat/completions", json=body, timeout=300.0)
    if resp.status_code != 200:
        log.error("sample request failed: HTTP %d %s", resp.status_code, resp.text)
        return
    data = resp.json()
    print(f"sample request: {SAMPLE_PROMPT}")
    print(f"answer: {data['choices'][0]['message']['content'].strip()}")
    print(f"usage: {json.dumps(data.get('usage'))}; Server-Timing: {resp.headers.get('server-timing')}", flush=True)
