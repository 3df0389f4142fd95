"""The node supervisor: starts one vLLM server for a role, waits until it is healthy, serves `/info`
and `/health` about it, forwards signals, and stops when the server dies.

The vLLM server runs in its own process group so that stopping the supervisor stops every process
vLLM spawned (engine core, workers), leaving none behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from typing import Any, Iterator

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from core import host
from core.cluster_token import ClusterTokenMiddleware
from core.messages import NodeInfo
from core.host import detect_platform
from node.launch import NodeLaunch, resolve
from node.role import NodeRole
from node.settings import NodeSettings
from node.tokenizer_route import add_tokenizer_route

log = logging.getLogger(__name__)
STOP_GRACE_S = 20.0
WORKER_NAME = "VLLM::Worker"  # what vLLM names its worker processes (/proc/PID/comm)


class Supervisor:
    """Runs one node's vLLM server (see the module docstring); `launch` says what to run and how."""

    def __init__(self, launch: NodeLaunch) -> None:
        self.launch = launch
        self.process: subprocess.Popen[bytes] | None = None
        self.engine_ready = False
        self.exit_code: int | None = None
        self.failed = False  # the server died or never became ready (as opposed to being told to stop)
        self.restarts = 0

    def info(self) -> NodeInfo:
        return self.launch.info(self.engine_ready, self.process.pid if self.process else None)

    def start(self) -> None:
        cmd = self.launch.vllm_command()
        log.info("starting %s vLLM server: %s", self.role, " ".join(cmd))
        env = self.launch.vllm_env(dict(os.environ))
        self.process = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=host.die_with_parent)

    @property
    def role(self) -> str:
        return self.launch.role.name

    def stop(self) -> None:
        """Stop the server's whole process group: SIGTERM, then SIGKILL after a grace period."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            _kill_group(proc, signal.SIGKILL)  # children may outlive the leader
            return
        log.info("stopping %s vLLM server (pid %d)", self.role, proc.pid)
        _kill_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            log.warning("vLLM server did not stop in %.0f s; killing it", STOP_GRACE_S)
        _kill_group(proc, signal.SIGKILL)
        proc.wait()

    def restore_core_binding(self) -> None:
        """vLLM's NixlConnector on CPU moves the worker's main thread to the last core of each NUMA node
        (vllm/distributed/kv_transfer/kv_connector/v1/nixl/base_worker.py, "reserve ... cores for
        start_load_kv"). With one core per node, that puts the prefill and the decode worker on the same
        core. Put the worker's threads back on this node's cores."""
        cores = self.launch.cpu_cores
        if self.launch.platform.cuda or cores is None or self.process is None:
            return
        moved = host.repin_threads(self.process.pid, host.parse_cores(cores), WORKER_NAME)
        if moved:
            log.info("moved %d vLLM worker threads back to cores %s", moved, cores)

    async def watch(self, server: uvicorn.Server) -> None:
        """Watch the server until it dies, restarting it up to `max_restarts` times; then end the node."""
        async with httpx.AsyncClient(timeout=2.0) as client:
            while await self._watch_once(client) and self.restarts < self.launch.settings.engine.restart_on_crash:
                self.restarts += 1
                log.warning("%s vLLM server died (exit code %s); restarting it (%d of %d)", self.role,
                            self.process.poll() if self.process else None, self.restarts, self.launch.settings.engine.restart_on_crash)
                _kill_group(self.process, signal.SIGKILL)  # what is left of the old one
                self.start()
        self.exit_code = self.process.poll() if self.process else None
        self.failed = True
        log.error("%s vLLM server stopped (exit code %s); stopping the node", self.role, self.exit_code)
        self.engine_ready = False
        server.should_exit = True

    async def _watch_once(self, client: httpx.AsyncClient) -> bool:
        """Poll one server process until it is healthy, then while it lives. True if it died; False if it
        never became ready in time."""
        started_s = last_report_s = time.monotonic()
        self.engine_ready = False
        while self.process is not None and self.process.poll() is None:
            healthy = await _is_healthy(client, self.launch.vllm_url)
            now_s = time.monotonic()
            if healthy and not self.engine_ready:
                log.info("%s vLLM server ready in %.1f s at %s", self.role, now_s - started_s,
                         self.launch.vllm_url)
                self.restore_core_binding()
            elif not healthy and not self.engine_ready and now_s - last_report_s >= 10:
                log.info("%s vLLM server loading (%.0f s)", self.role, now_s - started_s)
                last_report_s = now_s
            self.engine_ready = healthy or self.engine_ready
            if not self.engine_ready and now_s - started_s > self.launch.settings.ready_timeout_s:
                log.error("vLLM server not ready after %.0f s; giving up", self.launch.settings.ready_timeout_s)
                return False
            await asyncio.sleep(1.0)
        return True


async def _is_healthy(client: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await client.get(f"{url}/health")).status_code == 200
    except httpx.HTTPError:
        return False


def _request_exit(server: uvicorn.Server, sig: int) -> None:
    log.info("received %s; stopping", signal.Signals(sig).name)
    server.should_exit = True


def _kill_group(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    if proc is None:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def info_app(supervisor: Supervisor) -> FastAPI:
    app = FastAPI(title=f"disagg {supervisor.role} node")

    @app.get("/info")
    async def info() -> Any:
        return supervisor.info().model_dump()

    @app.get("/health")
    async def health() -> JSONResponse:
        ok = supervisor.engine_ready
        return JSONResponse({"status": "ok" if ok else "loading", "role": supervisor.role},
                            status_code=200 if ok else 503)

    add_tokenizer_route(app, supervisor.launch.model_dir)  # for a prefix-aware router on another host
    if supervisor.launch.cluster_token:
        app.add_middleware(ClusterTokenMiddleware, token=supervisor.launch.cluster_token)  # /health stays open
    return app


class _InfoServer(uvicorn.Server):
    """uvicorn re-raises SIGINT/SIGTERM after serving, which would kill us before vLLM is stopped;
    here the supervisor owns the signals instead."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def run_node(settings: NodeSettings, role: NodeRole) -> int:
    """Run a node on this host until it is told to stop (SIGINT/SIGTERM) or its vLLM server dies."""
    launch = resolve(settings, role, detect_platform())
    log.info("%s node transport: %s (%s)", role.name, launch.transport.name, launch.transport.reason)
    return run_launch(launch)


def run_launch(launch: NodeLaunch) -> int:
    """Run a resolved node (see `run_node`); 1 when its vLLM server died or never became ready."""
    supervisor = Supervisor(launch)
    server = _InfoServer(uvicorn.Config(info_app(supervisor), host=launch.settings.host,
                                        port=launch.settings.info_port, log_level="warning"))
    supervisor.start()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, _request_exit, server, sig)
        watcher = asyncio.create_task(supervisor.watch(server))
        try:
            await server.serve()
        finally:
            watcher.cancel()

    try:
        asyncio.run(main())
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        supervisor.stop()
    return 1 if supervisor.failed else 0
