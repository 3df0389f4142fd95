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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Integration tests that share a session cluster run together: the nixl cluster's, then the tcp
    cluster's, then those that stop it and start their own. Each switch of the session's cluster costs about a
    minute on a 2-core box; otherwise the order is the files' own."""
    positions = [i for i, item in enumerate(items) if "integration" in item.keywords]
    ordered = sorted((items[i] for i in positions), key=_cluster_group)
    for position, item in zip(positions, ordered):
        items[position] = item


def _cluster_group(item: pytest.Item) -> int:
    names = set(getattr(item, "fixturenames", ()))
    param = getattr(getattr(item, "callspec", None), "params", {}).get("any_cluster")
    module = getattr(item, "module", None)
    if module is not None and ("cluster" in vars(module) or "tcp_cluster" in vars(module)):
        return 2  # a module with a cluster fixture of its own (it stops the session's)
    if "cluster" in names or param == "nixl":
        return 0
    if "tcp_cluster" in names or param == "tcp":
        return 1
    return 2
