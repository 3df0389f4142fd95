"""The router's HTTP app: OpenAI routes, health, metrics, and the one place errors become HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any, AsyncIterator

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from disagg.errors import DisaggError, PayloadTooLarge
from disagg.messages import RequestTiming
from router import validation
from router.config import RouterConfig
from router.dispatch import Dispatcher
from router.metrics import RouterMetrics
from router.registry import NodeRegistry
from router.upstream import get_json

log = logging.getLogger(__name__)


def create_app(config: RouterConfig) -> FastAPI:
    registry = NodeRegistry.from_urls(config.prefill_urls, config.decode_urls)
    metrics = RouterMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        timeout = httpx.Timeout(config.request_timeout_s, connect=config.connect_timeout_s)
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client, \
                httpx.AsyncClient(timeout=httpx.Timeout(5.0)) as health_client:
            app.state.dispatcher = Dispatcher(config, registry, client, metrics)
            await registry.check_all(health_client)
            task = asyncio.create_task(registry.run_health_loop(health_client, config.health_interval_s))
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(title="disagg router", lifespan=lifespan)
    app.state.config, app.state.registry, app.state.metrics = config, registry, metrics
    _add_error_handlers(app)
    _add_openai_routes(app)
    _add_ops_routes(app)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DisaggError)
    async def disagg_error(_: Request, exc: DisaggError) -> JSONResponse:
        headers = {}
        if getattr(exc, "retry_after_s", None) is not None:
            headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
        return JSONResponse(exc.to_openai(), status_code=exc.http_status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = DisaggError(str(exc.detail), code=str(exc.status_code))
        err.http_status = exc.status_code
        err.error_type = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(err.to_openai(), status_code=exc.status_code)


def _add_openai_routes(app: FastAPI) -> None:
    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await _serve(request, "completions", validation.validate_completion)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        return await _serve(request, "chat", validation.validate_chat)

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        dispatcher: Dispatcher = request.app.state.dispatcher
        node = request.app.state.registry.pick("decode")
        return JSONResponse(await get_json(dispatcher.client, "decode", f"{node.vllm_url}/v1/models"))


async def _serve(request: Request, endpoint: str, validate: Any) -> Any:
    config: RouterConfig = request.app.state.config
    raw = await _read_body(request, config.max_body_bytes)
    body = validation.parse_body(raw)
    validate(body)
    timing = RequestTiming(request_id=f"disagg-{uuid.uuid4().hex}", mode=config.mode, endpoint=endpoint)
    dispatcher: Dispatcher = request.app.state.dispatcher
    dispatcher.metrics.in_flight.inc()
    try:
        return await dispatcher.serve(body, endpoint, timing)
    except DisaggError as exc:
        dispatcher.metrics.failures.labels(exc.code or exc.error_type).inc()
        dispatcher.finish(timing, f"error_{exc.http_status}")
        raise
    finally:
        dispatcher.metrics.in_flight.dec()


async def _read_body(request: Request, max_body_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_body_bytes:
        raise PayloadTooLarge(f"request body of {declared} bytes is over the limit of {max_body_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body_bytes:
            raise PayloadTooLarge(f"request body is over the limit of {max_body_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _add_ops_routes(app: FastAPI) -> None:
    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        config: RouterConfig = request.app.state.config
        registry: NodeRegistry = request.app.state.registry
        roles = ("prefill", "decode") if config.mode == "disagg" else ("decode",)
        ok = all(registry.has_healthy(role) for role in roles)
        body = {"status": "ok" if ok else "unavailable", "mode": config.mode,
                "nodes": [n.describe() for n in registry.nodes]}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        m: RouterMetrics = request.app.state.metrics
        for role in ("prefill", "decode"):
            m.nodes_healthy.labels(role).set(
                sum(1 for n in request.app.state.registry.nodes if n.role == role and n.healthy))
        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
