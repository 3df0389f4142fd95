"""Property-based requests generated from the router's own OpenAPI document (schemathesis): valid and
invalid bodies, headers and methods for every route. No 5xx, every error in OpenAI's shape."""

from __future__ import annotations

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")  # in the `test` extra

from hypothesis import HealthCheck, assume, settings  # noqa: E402  (schemathesis brings hypothesis)

from bench.stub_vllm import MAGIC_WORDS  # noqa: E402
from router.app import create_app  # noqa: E402
from tests.support.hostile import check_error_body  # noqa: E402
from router.config import RouterConfig  # noqa: E402
from tests.support.stub_cluster import completion, stub_cluster  # noqa: E402

KEY = "sk-schema-test"
schema = schemathesis.openapi.from_dict(
    create_app(RouterConfig(mode="colocated", decode_urls=("http://unused:1",))).openapi())


@pytest.fixture(scope="module")
def cluster():
    with stub_cluster(api_key=KEY, max_body_bytes=256 * 1024) as c:
        yield c
        assert httpx.get(f"{c.url}/health").json()["status"] == "ok"
        ok = httpx.post(f"{c.url}/v1/completions", json=completion(), headers={"Authorization": f"Bearer {KEY}"},
                        timeout=10)
        assert ok.status_code == 200 and c.decodes[0].active == 0 and c.prefills[0].active == 0


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_generated_requests_never_get_a_5xx_and_errors_are_in_openai_shape(case, cluster):
    if isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
        case.body["model"] = "stub-model"  # so that valid bodies get past the stub's model check
    # Hypothesis draws strings from the code's own literals too: a stub's magic word fails a node on purpose
    assume(not any(word in repr(case.body) for word in MAGIC_WORDS))
    response = case.call(base_url=cluster.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert response.status_code < 500, f"{case.method} {case.path} {case.body!r:.300}: {response.text[:300]}"
    if response.status_code >= 400 and case.path.startswith("/v1/"):
        check_error_body(response.json(), f"{case.method} {case.path} {case.body!r:.200}")
