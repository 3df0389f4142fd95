"""On a CUDA host: the host probe agrees with torch, and nodes register KV in GPU memory by default."""

from __future__ import annotations

import pytest

from core.host import has_cuda
from core.host import detect_platform

pytestmark = pytest.mark.gpu


def test_host_probe_agrees_with_torch():
    torch = pytest.importorskip("torch")
    assert has_cuda() == torch.cuda.is_available()


def test_auto_kv_buffer_is_gpu_memory_on_cuda_hosts():
    assert detect_platform().kv_buffer_device()[0] == "cuda"
