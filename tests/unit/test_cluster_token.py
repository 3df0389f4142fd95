"""The cluster token on the nodes' HTTP endpoints: the middleware vLLM loads, the supervisor's /info, the token
file, and the router sending it (against stub vLLM servers that require it)."""

from __future__ import annotations

import json
import logging
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from core.cluster_token import CLUSTER_TOKEN_ENV, ClusterTokenMiddleware, read_token
from node.launch import MIDDLEWARE_IMPORT_PATH
from core.errors import ConfigError
from core.host import Platform
from decode_node.role import ROLE as DECODE
from node.launch import resolve
from node.settings import NodeSettings
from node.supervisor import Supervisor, info_app
from router.app import create_app
from router.config import RouterConfig
from tests.support.stub_cluster import completion
from tests.support.stub_vllm import create_stub
from tests.support.threaded_server import serve

TOKEN = "s3cret-cluster-token"


def _guarded_app(token: str | None) -> FastAPI:
    app = FastAPI()
    for path in ("/health", "/metrics", "/v1/completions", "/invocations", "/tokenize", "/pause"):
        app.add_api_route(path, lambda: {"ran": True}, methods=["GET", "POST"])
    app.add_middleware(ClusterTokenMiddleware, token=token)
    return app


def test_every_path_but_health_and_metrics_needs_the_token():
    with serve(_guarded_app(TOKEN)) as url:
        for path in ("/health", "/metrics"):
            assert httpx.get(f"{url}{path}", timeout=5).json() == {"ran": True}
        for path in ("/v1/completions", "/invocations", "/tokenize", "/pause", "/nope"):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                            {"Authorization": f"Bearer {TOKEN}x"}):
                resp = httpx.post(f"{url}{path}", headers=headers, json={}, timeout=5)
                assert resp.status_code == 401, (path, headers)
                assert resp.headers["www-authenticate"] == "Bearer"
                error = resp.json()["error"]
                assert error["code"] == "invalid_api_key" and "cluster token" in error["message"]
            ok = httpx.post(f"{url}{path}", headers={"Authorization": f"bearer {TOKEN}"}, json={}, timeout=5)
            assert ok.status_code == (404 if path == "/nope" else 200)


def test_without_a_token_the_middleware_lets_everything_through(monkeypatch):
    monkeypatch.delenv(CLUSTER_TOKEN_ENV, raising=False)
    with serve(_guarded_app(None)) as url:
        assert httpx.post(f"{url}/v1/completions", timeout=5).json() == {"ran": True}


def test_vllm_builds_it_without_arguments_so_it_reads_the_environment(monkeypatch):
    monkeypatch.setenv(CLUSTER_TOKEN_ENV, f"  {TOKEN}\n")
    assert ClusterTokenMiddleware(app=None).token == TOKEN  # type: ignore[arg-type]


def test_token_file_is_read_and_bad_files_are_config_errors(tmp_path: Path, monkeypatch, caplog):
    good = tmp_path / "token"
    good.write_text(TOKEN + "\n")
    good.chmod(0o600)
    assert read_token(good) == TOKEN
    good.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        read_token(good)
    assert "chmod 600" in caplog.text
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "spaces").write_text("two words")
    for name, match in (("empty", "is empty"), ("missing", "No such file"), ("spaces", "printable ASCII")):
        with pytest.raises(ConfigError, match=match):
            read_token(tmp_path / name)
    monkeypatch.setenv(CLUSTER_TOKEN_ENV, TOKEN)
    assert read_token(None) == TOKEN
    monkeypatch.setenv(CLUSTER_TOKEN_ENV, " ")
    assert read_token(None) is None


def _model_dir(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 2, "num_attention_heads": 4,
                                                      "num_key_value_heads": 2, "hidden_size": 64}))
    return tmp_path


def _decode_node(model_dir: Path, token: str | None):
    settings = NodeSettings.build(role="decode", **DECODE.defaults.as_settings(), model=str(model_dir),
                                  transport="tcp")
    environ = {CLUSTER_TOKEN_ENV: token} if token else {}
    return resolve(settings, DECODE, Platform(cuda=False, cores=(0, 1)), environ=environ)


def test_a_node_with_a_token_loads_the_middleware_and_passes_the_token_by_environment(tmp_path: Path):
    config = _decode_node(_model_dir(tmp_path), TOKEN)
    cmd = config.vllm_command()
    assert cmd[cmd.index("--middleware") + 1] == MIDDLEWARE_IMPORT_PATH
    assert TOKEN not in " ".join(cmd) and config.vllm_env({})[CLUSTER_TOKEN_ENV] == TOKEN
    open_config = _decode_node(config.model_dir, None)  # loaded anyway (the release call); it checks no token
    assert open_config.vllm_command().count("--middleware") == 1 and CLUSTER_TOKEN_ENV not in open_config.vllm_env({})


def test_the_supervisor_info_needs_the_token_and_health_does_not(tmp_path: Path):
    config = _decode_node(_model_dir(tmp_path), TOKEN)
    with serve(info_app(Supervisor(config))) as url:
        assert httpx.get(f"{url}/health", timeout=5).status_code == 503  # open: loading, not 401
        assert httpx.get(f"{url}/info", timeout=5).status_code == 401
        info = httpx.get(f"{url}/info", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        assert info.status_code == 200 and info.json()["role"] == "decode"


def _router_before_guarded_stubs(stack: ExitStack, router_token: str | None) -> tuple[str, list]:
    stubs = [create_stub("prefill"), create_stub("decode")]
    urls = []
    for app, _ in stubs:
        app.add_middleware(ClusterTokenMiddleware, token=TOKEN)
        urls.append(stack.enter_context(serve(app)))
    config = RouterConfig(mode="disagg", prefill_urls=(urls[0],), decode_urls=(urls[1],), health_interval_s=0.2,
                          cluster_token=router_token)
    return stack.enter_context(serve(create_app(config))), [state for _, state in stubs]


def test_the_router_sends_the_token_to_every_node():
    with ExitStack() as stack:
        url, (prefill, decode) = _router_before_guarded_stubs(stack, TOKEN)
        resp = httpx.post(f"{url}/v1/completions", json=completion(), timeout=10)
        assert resp.status_code == 200, resp.text
        assert len(prefill.calls) == 1 and len(decode.pulled) == 1
        assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 200


def test_a_router_without_the_token_says_so_and_runs_nothing():
    with ExitStack() as stack:
        url, (prefill, decode) = _router_before_guarded_stubs(stack, None)
        resp = httpx.post(f"{url}/v1/completions", json=completion(), timeout=10)
        assert resp.status_code == 503, resp.text
        assert "cluster token" in resp.json()["error"]["message"]
        assert prefill.calls == [] and decode.pulled == []
