"""On a CUDA host: the host probe agrees with torch, and the KV buffer device follows the rule of
`core.host.Platform.kv_buffer_device` for what was detected."""

from __future__ import annotations

import pytest

from core.host import detect_platform, has_cuda

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(60)]


def test_host_probe_agrees_with_torch():
    torch = pytest.importorskip("torch")
    assert has_cuda() == torch.cuda.is_available()
    found = detect_platform()
    if found.device_name is not None:  # /proc/driver/nvidia/gpus may be hidden in a container
        assert found.device_name == torch.cuda.get_device_name(0)
    integrated = getattr(torch.cuda.get_device_properties(0), "is_integrated", None)
    if integrated is not None and found.device_name is not None:
        assert found.unified_memory == bool(integrated)


def test_auto_kv_buffer_follows_the_detected_facts():
    found = detect_platform()
    assert found.cuda
    local, _ = found.kv_buffer_device(peer_is_local=True)
    remote, _ = found.kv_buffer_device(peer_is_local=False)
    assert local == ("cpu" if found.unified_memory else "cuda")
    assert remote == ("cuda" if found.gpudirect_rdma else "cpu")
