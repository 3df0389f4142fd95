"""The middleware a node loads into vLLM: the cluster token around the release call, which hands the
parameters to the engine's path for refused P/D requests and computes nothing."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from node.vllm_middleware import RELEASE_PATH, DisaggNodeMiddleware
from tests.support.threaded_server import serve

TOKEN = "node-token-for-tests"
PARAMS = {"do_remote_prefill": True, "remote_request_id": "p-1", "remote_host": "10.0.0.1", "remote_port": 5601}


class FakeEngine:
    def __init__(self) -> None:
        self.rejected: list[tuple[str, dict]] = []

    async def notify_kv_transfer_request_rejected(self, request_id: str, params: dict) -> None:
        self.rejected.append((request_id, params))


def node_app(token: str | None) -> tuple[FastAPI, FakeEngine]:
    app, engine = FastAPI(), FakeEngine()
    app.state.engine_client = engine

    @app.post("/v1/completions")
    async def completions() -> dict:
        return {"served": True}

    app.add_middleware(DisaggNodeMiddleware, token=token)
    return app, engine


def test_the_release_call_reaches_the_engine_and_other_paths_reach_vllm():
    app, engine = node_app(None)
    with serve(app) as url:
        ok = httpx.post(url + RELEASE_PATH, json={"request_id": "release-1", "kv_transfer_params": PARAMS}, timeout=5)
        assert ok.status_code == 200 and ok.json() == {"released": True}
        assert engine.rejected == [("release-1", PARAMS)]
        assert httpx.post(url + "/v1/completions", json={}, timeout=5).json() == {"served": True}


def test_a_malformed_release_is_a_400_and_reaches_no_engine():
    app, engine = node_app(None)
    with serve(app) as url:
        for body in ({}, {"request_id": 1, "kv_transfer_params": PARAMS}, {"request_id": "r"},
                     {"request_id": "r", "kv_transfer_params": {"do_remote_decode": True}}):
            resp = httpx.post(url + RELEASE_PATH, json=body, timeout=5)
            assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_value"
        assert httpx.post(url + RELEASE_PATH, content=b"\xff not json", timeout=5).status_code == 400
    assert engine.rejected == []


def test_the_release_call_needs_the_cluster_token():
    app, engine = node_app(TOKEN)
    with serve(app) as url:
        body = {"request_id": "release-2", "kv_transfer_params": PARAMS}
        assert httpx.post(url + RELEASE_PATH, json=body, timeout=5).status_code == 401
        assert engine.rejected == []
        ok = httpx.post(url + RELEASE_PATH, json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        assert ok.status_code == 200 and len(engine.rejected) == 1
