"""`disagg kv-tier`: the Redis server of a cluster's KV tier (transport/kv_tier), supervised.

`disagg up` starts it when the cluster file's `[kv_tier]` (or `up --local --kv-tier redis`) asks for Redis
without a `url`: one `redis-server` (from the OS packages, `deploy/install.sh`) on the tier host, bound to
that host's address, with no persistence (`--save '' --appendonly no`: a cache), the memory cap
(`--maxmemory max_bytes --maxmemory-policy allkeys-lru`: the least recently used entries are evicted and
counted) and, when the cluster has a token, the token as its password (given on redis-server's stdin, never
on a command line). This process restarts Redis when it dies (an empty cache: the nodes compute and store
again) and serves, on `health_port`:

- `GET /health`: 200 when Redis answers, else 503; JSON with the Redis pid and the restart count;
- `GET /metrics`: Prometheus text, `disagg_kv_tier_redis_*` (used and max memory, keys, evicted and expired
  keys, keyspace hits and misses, restarts, up).

SIGTERM/SIGINT stop Redis, then this process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core import host
from core.cluster_token import read_token
from core.errors import ConfigError
from core.settings_flags import add_flags, describe_validation_error, given_values

log = logging.getLogger(__name__)
REDIS_SERVER = "redis-server"
STOP_GRACE_S = 10.0


class KvTierServerSettings(BaseModel):
    """The tier server's settings (flags, or `--settings JSON` from `disagg up`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="address Redis and the health server bind")
    port: int = Field(6390, ge=1, le=65535, description="Redis port")
    health_port: int = Field(6391, ge=1, le=65535, description="/health and /metrics port")
    max_bytes: int = Field(2**30, ge=2**20, description="Redis maxmemory in bytes (allkeys-lru beyond it)")
    cluster_token_file: str | None = Field(None, json_schema_extra={"metavar": "PATH"}, description=(
        "the cluster token file: Redis then requires the token as its password"))
    restart_delay_s: float = Field(1.0, ge=0, le=600, description="wait this long before restarting a dead Redis")

    def to_json(self) -> str:
        return self.model_dump_json(exclude_defaults=True)


def redis_argv(settings: KvTierServerSettings, *, password_on_stdin: bool) -> list[str]:
    """redis-server's command line: a cache with the memory cap; `-` last reads more config (the password)
    from stdin."""
    argv = [REDIS_SERVER, "--port", str(settings.port), "--bind", settings.host, "--save", "", "--appendonly", "no",
            "--maxmemory", str(settings.max_bytes), "--maxmemory-policy", "allkeys-lru", "--daemonize", "no",
            "--loglevel", "notice"]
    return argv + ["-"] if password_on_stdin else argv


def start_redis(settings: KvTierServerSettings, password: str | None) -> subprocess.Popen[bytes]:
    """Start redis-server (dies with this process); ConfigError when it is not installed."""
    if shutil.which(REDIS_SERVER) is None:
        raise ConfigError("redis-server is not installed here (deploy/install.sh installs it from the OS packages; "
                          "Debian/Ubuntu: apt-get install -y redis-server)")
    proc = subprocess.Popen(redis_argv(settings, password_on_stdin=bool(password)), stdin=subprocess.PIPE,
                            preexec_fn=host.die_with_parent)
    assert proc.stdin is not None
    if password:
        proc.stdin.write(f"requirepass {password}\n".encode())
    proc.stdin.close()
    log.info("redis-server started (pid %d) on %s:%d, maxmemory %d bytes", proc.pid, settings.host, settings.port,
             settings.max_bytes)
    return proc


class TierServer:
    """Redis and its restarts (see the module docstring)."""

    def __init__(self, settings: KvTierServerSettings) -> None:
        self.settings = settings
        token_file = settings.cluster_token_file
        self.password = read_token(Path(token_file).expanduser(), {}) if token_file else None
        self.url = f"redis://{_url_host(settings.host)}:{settings.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.stopping = False

    def facts(self) -> dict[str, int] | None:
        """Redis's counters (`redis_backend.server_facts`), None when it does not answer."""
        from transport.kv_tier.backend import TierError
        from transport.kv_tier.redis_backend import server_facts

        try:
            return server_facts(self.url, timeout_s=1.0, password=self.password)
        except TierError:
            return None

    async def keep_running(self) -> None:
        """Start Redis, and start it again whenever it dies, until `stopping`."""
        while not self.stopping:
            self.process = start_redis(self.settings, self.password)
            while self.process.poll() is None and not self.stopping:
                await asyncio.sleep(0.2)
            if self.stopping:
                return
            self.restarts += 1
            log.warning("redis-server exited (code %s); restarting it in %.1f s (restart %d)",
                        self.process.returncode, self.settings.restart_delay_s, self.restarts)
            await asyncio.sleep(self.settings.restart_delay_s)

    def stop(self) -> None:
        self.stopping = True
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def metrics_text(self) -> str:
        facts = self.facts()
        lines = [_sample("up", "gauge", "1 when Redis answers", int(facts is not None)),
                 _sample("restarts_total", "counter", "times Redis was restarted", self.restarts)]
        for name, kind, doc in _FACTS:
            if facts is not None:
                lines.append(_sample(name, kind, doc, facts[_FACT_SOURCE.get(name, name)]))
        return "\n".join(lines) + "\n"


_FACTS = (("used_memory_bytes", "gauge", "bytes Redis uses"), ("maxmemory_bytes", "gauge", "Redis's memory cap"),
          ("keys", "gauge", "entries held"), ("evicted_keys_total", "counter", "entries evicted to hold the cap"),
          ("expired_keys_total", "counter", "entries expired (TTL)"),
          ("keyspace_hits_total", "counter", "reads that found their key"),
          ("keyspace_misses_total", "counter", "reads that did not"))
_FACT_SOURCE = {"used_memory_bytes": "used_memory", "maxmemory_bytes": "maxmemory",
                "evicted_keys_total": "evicted_keys",
                "expired_keys_total": "expired_keys", "keyspace_hits_total": "keyspace_hits",
                "keyspace_misses_total": "keyspace_misses"}


def _sample(name: str, kind: str, doc: str, value: int) -> str:
    full = f"disagg_kv_tier_redis_{name}"
    return f"# HELP {full} {doc}\n# TYPE {full} {kind}\n{full} {value}"


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def app_of(server: TierServer) -> Any:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, PlainTextResponse

    app = FastAPI(title="disagg kv-tier")

    @app.get("/health")
    async def health() -> JSONResponse:
        up = await asyncio.to_thread(server.facts) is not None
        pid = server.process.pid if server.process is not None else None
        return JSONResponse({"status": "ok" if up else "down", "redis_pid": pid, "restarts": server.restarts},
                            status_code=200 if up else 503)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(await asyncio.to_thread(server.metrics_text))

    return app


def run(settings: KvTierServerSettings) -> int:
    """Serve until SIGINT/SIGTERM; 0 then."""
    import uvicorn

    class _Http(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # ours below: stop Redis, then this process
            yield

    server = TierServer(settings)
    http = _Http(uvicorn.Config(app_of(server), host=settings.host, port=settings.health_port, log_level="warning"))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: setattr(http, "should_exit", True))
        keeper = asyncio.create_task(server.keep_running())
        try:
            await http.serve()
        finally:
            server.stopping = True
            keeper.cancel()

    try:
        asyncio.run(main())
    finally:
        server.stop()
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("kv-tier", help="run the Redis server of a cluster's KV tier (what `disagg up` starts)",
                       description="\n\n".join(__doc__.split("\n\n")[1:3]) if __doc__ else None,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    flags = add_flags(p, KvTierServerSettings)
    p.add_argument("--settings", metavar="JSON", default=None, help="every setting as one JSON object")
    p.set_defaults(func=_run_args, _tier_flags=flags)


def _run_args(args: argparse.Namespace) -> int:
    values = given_values(args, args._tier_flags)
    try:
        if args.settings is not None:
            if values:
                raise ConfigError(f"--settings carries every setting; drop {', '.join(sorted(values))}")
            settings = KvTierServerSettings.model_validate_json(args.settings)
        else:
            settings = KvTierServerSettings(**values)
    except ValidationError as exc:
        raise describe_validation_error(exc, "kv-tier: ") from None
    return run(settings)
