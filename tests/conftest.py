"""Suite-wide: `@pytest.mark.gpu` tests skip where there is no CUDA device."""

from __future__ import annotations

import pytest

from core.host import has_cuda


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (no NVIDIA driver on this host)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
