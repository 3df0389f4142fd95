"""Idle connections between the router and its nodes and clients: the router drops its own to a node before
a vLLM server (uvicorn, 5 s) would close one under a reused call, and keeps a client's longer than clients'
pools do (`router.upstream.NODE_KEEPALIVE_S`, `router.cli.CLIENT_KEEPALIVE_S`)."""

from __future__ import annotations

import argparse
import asyncio

import pytest
from fastapi import FastAPI, Request

from router import cli
from router.upstream import NODE_KEEPALIVE_S, client_session
from tests.support.threaded_server import serve

pytestmark = pytest.mark.timeout(60)


def _peer_port_app() -> FastAPI:
    app = FastAPI()

    @app.get("/peer")
    async def peer(request: Request) -> dict:
        return {"port": request.client.port}  # the router's end: a new connection has a new port

    return app


async def _peer_ports(url: str, idle_s: float) -> tuple[int, int, int]:
    async with client_session(10.0, 5.0, {}) as session:
        ports = []
        for pause_s in (0.0, 0.2, idle_s):
            await asyncio.sleep(pause_s)
            async with session.get(f"{url}/peer") as resp:
                ports.append((await resp.json())["port"])
    return ports[0], ports[1], ports[2]


def test_a_pooled_node_connection_is_reused_when_busy_and_dropped_before_the_servers_5_s():
    assert NODE_KEEPALIVE_S < 5.0  # vLLM's VLLM_HTTP_TIMEOUT_KEEP_ALIVE and uvicorn's default
    with serve(_peer_port_app()) as url:
        first, soon_after, after_idle = asyncio.run(_peer_ports(url, NODE_KEEPALIVE_S + 0.5))
    assert soon_after == first  # the pool keeps a busy connection
    assert after_idle != first  # but not one idle for longer than NODE_KEEPALIVE_S: a fresh one instead


def test_the_router_serves_with_a_client_keep_alive_longer_than_client_pools(monkeypatch):
    seen = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: seen.update(kwargs))
    parser = argparse.ArgumentParser()
    cli.add_parsers(parser.add_subparsers())
    assert cli.run(parser.parse_args(["router", "--mode", "colocated", "--decode", "http://127.0.0.1:9"])) == 0
    assert seen["timeout_keep_alive"] == cli.CLIENT_KEEPALIVE_S > 15  # aiohttp's client pool keeps 15 s
