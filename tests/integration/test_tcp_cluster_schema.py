"""Requests generated from the router's OpenAPI document (schemathesis, as in tests/unit/test_router_schema.py),
sent to the session's tcp cluster: real vLLM nodes behind the router. No 5xx, every error in OpenAI's shape,
and afterwards the cluster still serves and holds nothing. Generated lengths are capped (at most 4 tokens,
also when the body names none or sets it to null, OpenAI's default; n <= 2) so a valid body costs well
under a second on this CPU."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")  # in the `test` extra

from hypothesis import HealthCheck, settings  # noqa: E402  (schemathesis brings hypothesis)

from router.app import create_app  # noqa: E402
from tests.support.hostile import check_error_body  # noqa: E402
from router.config import RouterConfig  # noqa: E402
from tests.integration.checks import assert_serves_and_drained  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
schema = schemathesis.openapi.from_dict(
    create_app(RouterConfig(mode="colocated", decode_urls=("http://unused:1",))).openapi())
CAPS = {"max_tokens": 4, "max_completion_tokens": 4, "n": 2, "best_of": 2}


def _capped(body: dict, model: str) -> None:
    if isinstance(body.get("model"), str):
        body["model"] = model  # so that valid bodies get past the model check and reach vLLM
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = CAPS["max_tokens"]  # absent or null, vLLM generates up to the context's end
    for key, cap in CAPS.items():
        if isinstance(body.get(key), int) and not isinstance(body[key], bool) and cap < body[key] < 2**31:
            body[key] = cap


@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_generated_requests_to_real_nodes_never_get_a_5xx(case, tcp_cluster):
    if isinstance(case.body, dict):
        _capped(case.body, tcp_cluster.model_name)
    response = case.call(base_url=tcp_cluster.router_url, timeout=120)
    assert response.status_code < 500, f"{case.method} {case.path} {case.body!r:.300}: {response.text[:300]}"
    if response.status_code >= 400 and case.path.startswith("/v1/"):
        check_error_body(response.json(), f"{case.method} {case.path} {case.body!r:.200}")


def test_after_the_generated_requests_the_cluster_serves_and_holds_nothing(tcp_cluster):
    assert_serves_and_drained(tcp_cluster, "[after-schema]")
