"""Integration fixtures: real local clusters (see cluster_manager.py), one at a time.

`cluster` is disaggregated over NIXL, `tcp_cluster` over our TCP connector; each has a colocated baseline.
Without vLLM installed these tests skip, unless DISAGG_REQUIRE_ENGINE=1 (set by .ci/run) makes that an error.
"""

from __future__ import annotations

import os

import pytest

from tests.integration.cluster_manager import Cluster, ClusterManager


def _engine_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="session")
def clusters(tmp_path_factory: pytest.TempPathFactory):
    if not _engine_available():
        if os.environ.get("DISAGG_REQUIRE_ENGINE") == "1":
            pytest.fail("vLLM is not installed but DISAGG_REQUIRE_ENGINE=1")
        pytest.skip("vLLM is not installed (run deploy/install.sh)")
    from core.model import ensure_default_model

    manager = ClusterManager(ensure_default_model(), tmp_path_factory.mktemp("clusters"))
    try:
        yield manager
    finally:
        manager.stop()  # raises if the last cluster leaked a request, a KV block or a process


@pytest.fixture()
def cluster(clusters: ClusterManager) -> Cluster:
    return clusters.get("nixl")


@pytest.fixture()
def tcp_cluster(clusters: ClusterManager) -> Cluster:
    return clusters.get("tcp")
