"""The router's HTTP app: OpenAI routes, health, metrics, and the one place errors become HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any, AsyncIterator

import httpx
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.cluster_token import bearer_headers
from core.errors import ClientDisconnected, DeadlineExceeded, DisaggError
from core.messages import RequestTiming
from router import openapi, policies, validation
from router.admission import Admission
from router.auth import require_api_key
from router.body import read_body
from router.config import RouterConfig
from router.dispatch import Call, Dispatcher
from router.load import LoadMonitor
from router.metrics import RouterMetrics
from router.prefix_routing import PrefixRouting
from router.registry import NodeRegistry
from router.upstream import client_session, get_json
from router.watch import until_done

log = logging.getLogger(__name__)


def create_app(config: RouterConfig) -> FastAPI:
    registry = NodeRegistry.from_urls(config.prefill_urls, config.decode_urls)
    metrics = RouterMetrics()
    prefix = PrefixRouting.create(config.prefix, config.policy_names, registry, metrics.registry)
    registry.policies = {role: policies.create(name, policies.PolicyContext(role, registry.loads, prefix))
                         for role, name in config.policy_names.items()}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        headers = bearer_headers(config.cluster_token)
        async with client_session(config.request_timeout_s, config.connect_timeout_s, headers) as client, \
                httpx.AsyncClient(timeout=httpx.Timeout(5.0), headers=headers) as health_client:
            app.state.dispatcher = Dispatcher(config, registry, client, metrics)
            await registry.check_all(health_client)
            tasks = [asyncio.create_task(registry.run_health_loop(health_client, config.health_interval_s))]
            if config.needs_load:  # router.load: the nodes' vLLM metrics, for load-aware routing and the decider
                monitor = LoadMonitor(registry.nodes)
                tasks.append(asyncio.create_task(monitor.run(health_client, config.load_interval_s)))
            if prefix is not None:  # the nodes' KV events, and a tokenizer (router.prefix_routing)
                await prefix.start(health_client, config.health_interval_s)
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                if prefix is not None:
                    await prefix.stop()

    app = FastAPI(title="disagg router", lifespan=lifespan)
    app.state.config, app.state.registry, app.state.metrics = config, registry, metrics
    app.state.prefix = prefix
    app.state.admission = Admission(config.max_inflight, config.max_queue)
    _add_error_handlers(app)
    app.include_router(_openai_routes())
    _add_ops_routes(app)
    _openapi_from_openai_schemas(app)
    return app


def _openapi_from_openai_schemas(app: FastAPI) -> None:
    """The app's OpenAPI document carries OpenAI's request and error schemas (router.openapi)."""
    generate = app.openapi

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = openapi.add_components(generate())
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]


def _add_error_handlers(app: FastAPI) -> None:
    """The one place errors become HTTP responses: OpenAI's shape, the status and headers of the class."""

    @app.exception_handler(DisaggError)
    async def disagg_error(_: Request, exc: DisaggError) -> JSONResponse:
        return JSONResponse(exc.to_openai(), status_code=exc.http_status, headers=exc.headers())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = DisaggError(f"{exc.detail} ({request.method} {request.url.path[:200]})")  # OpenAI: code null
        err.http_status = exc.status_code
        err.error_type = "invalid_request_error"
        return JSONResponse(err.to_openai(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error serving %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(DisaggError("internal error in the router", code="internal_error").to_openai(),
                            status_code=500)


def _openai_routes() -> APIRouter:
    routes = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])

    @routes.post("/completions", openapi_extra=openapi.request_body("completion"))
    async def completions(request: Request) -> Any:
        return await _serve(request, "completions")

    @routes.post("/chat/completions", openapi_extra=openapi.request_body("chat"))
    async def chat(request: Request) -> Any:
        return await _serve(request, "chat")

    @routes.get("/models")
    async def models(request: Request) -> Any:
        dispatcher: Dispatcher = request.app.state.dispatcher
        node = request.app.state.registry.pick("decode")
        return JSONResponse(await get_json(dispatcher.client, "decode", f"{node.vllm_url}/v1/models"))

    return routes


async def _serve(request: Request, endpoint: str) -> Any:
    """Admit, read and check the body, serve; every outcome is logged and counted exactly once."""
    state = request.app.state
    config: RouterConfig = state.config
    timing = RequestTiming(request_id=f"disagg-{uuid.uuid4().hex}", mode=config.mode, endpoint=endpoint)
    call = Call(timing, deadline_s=asyncio.get_running_loop().time() + config.request_timeout_s)
    try:
        body = await _admit(request, call, endpoint)
        return await until_done(request.receive, state.dispatcher.serve(body, endpoint, call), call.deadline_s)
    except DisaggError as exc:
        if not isinstance(exc, ClientDisconnected):
            state.metrics.failures.labels(exc.code or exc.error_type).inc()
        status = "client_disconnected" if isinstance(exc, ClientDisconnected) else f"error_{exc.http_status}"
        state.dispatcher.finish(timing, status)
        raise
    finally:
        await call.scope.aclose()  # empty if a stream took it over


async def _admit(request: Request, call: Call, endpoint: str) -> dict[str, Any]:
    """Take an in-flight slot (waiting in the queue if need be), then read and validate the body."""
    state = request.app.state
    try:
        async with asyncio.timeout_at(call.deadline_s):
            queued_s = time.monotonic()
            call.scope.callback((await state.admission.acquire()).release)
            call.timing.queue_s = time.monotonic() - queued_s
            raw = await read_body(request, state.config.max_body_bytes)
    except TimeoutError:
        raise DeadlineExceeded("the request waited past its deadline for a slot or for its body",
                               code="request_timeout") from None
    return validation.validate_request(endpoint, validation.parse_body(raw))


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
        admission: Admission = request.app.state.admission
        m.in_flight.set(admission.in_flight)
        m.queued.set(admission.queued)
        for role in ("prefill", "decode"):
            m.nodes_healthy.labels(role).set(
                sum(1 for n in request.app.state.registry.nodes if n.role == role and n.healthy))
        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
