"""`core.host`: platform detection from a fake /proc and /sys tree, the simulated hosts, and the one rule for
where NIXL registers KV (`Platform.kv_buffer_device`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from core.host import (PLATFORMS, Platform, detect_platform, ephemeral_ports, gpu_models, has_cuda,
                       peer_memory_module, platform_named)

pytestmark = pytest.mark.timeout(30)

H100_INFO = """Model: \t\t NVIDIA H100 80GB HBM3
IRQ:   \t\t 10
GPU UUID: \t GPU-9221d5d1-b60b-a624-bf14-0a1819cfda3b
Bus Type: \t PCIe
Bus Location: \t 0000:62:00.0
"""
GB10_INFO = "Model: \t\t NVIDIA GB10\nIRQ:   \t\t 0\nBus Location: \t 000f:01:00.0\n"


def fake_host(root: Path, *, driver: bool = False, gpus: dict[str, str] | None = None,
              rdma: tuple[str, ...] = (), modules: tuple[str, ...] = ()) -> Path:
    """A /proc and /sys tree under `root` with what a host of that kind shows."""
    if driver:
        (root / "proc/driver/nvidia").mkdir(parents=True)
        (root / "proc/driver/nvidia/version").write_text("NVRM version: NVIDIA UNIX Open Kernel Module 580.95.05\n")
    for bus, info in (gpus or {}).items():
        (root / "proc/driver/nvidia/gpus" / bus).mkdir(parents=True)
        (root / "proc/driver/nvidia/gpus" / bus / "information").write_text(info)
    for device in rdma:
        (root / "sys/class/infiniband" / device).mkdir(parents=True)
    for module in modules:
        (root / "sys/module" / module).mkdir(parents=True)
    root.mkdir(parents=True, exist_ok=True)
    return root


def detect(root: Path, machine: str = "x86_64") -> Platform:
    return detect_platform(root, machine=machine, cores=(0, 1, 2, 3))


def test_cpu_only_host(tmp_path):
    found = detect(fake_host(tmp_path, rdma=("mlx5_0",)))
    assert found == Platform(cuda=False, cores=(0, 1, 2, 3), rdma_devices=("mlx5_0",))


def test_dgx_spark_is_unified_memory_without_gpudirect(tmp_path):
    root = fake_host(tmp_path, driver=True, gpus={"000f:01:00.0": GB10_INFO},
                     rdma=("rocep1s0f1", "rocep1s0f0", "roceP2p1s0f0", "roceP2p1s0f1"))
    found = detect(root, machine="aarch64")
    assert (found.cuda, found.arch, found.device_name) == (True, "aarch64", "NVIDIA GB10")
    assert found.unified_memory and not found.gpudirect_rdma
    assert found.rdma_devices == PLATFORMS["dgx-spark"].rdma_devices
    # nvidia_peermem does not load on a Spark; even if it did, GB10's memory is not reachable by the NIC
    assert not detect(fake_host(tmp_path / "with-peermem", driver=True, gpus={"000f:01:00.0": GB10_INFO},
                                rdma=("rocep1s0f0",), modules=("nvidia_peermem",))).gpudirect_rdma


@pytest.mark.parametrize("module", ["nvidia_peermem", "nv_peer_mem"])
def test_h100_with_a_peer_memory_module_and_an_rdma_nic_has_gpudirect(tmp_path, module):
    root = fake_host(tmp_path, driver=True, gpus={"0000:62:00.0": H100_INFO, "0000:63:00.0": H100_INFO},
                     rdma=("mlx5_0",), modules=(module,))
    found = detect(root)
    assert found.device_name == "NVIDIA H100 80GB HBM3" and not found.unified_memory
    assert found.gpudirect_rdma and peer_memory_module(root) == module


@pytest.mark.parametrize("rdma, modules", [((), ("nvidia_peermem",)), (("mlx5_0",), ())])
def test_gpudirect_needs_both_the_module_and_an_rdma_device(tmp_path, rdma, modules):
    found = detect(fake_host(tmp_path, driver=True, gpus={"0000:62:00.0": H100_INFO}, rdma=rdma, modules=modules))
    assert found.cuda and not found.gpudirect_rdma


def test_driver_without_gpu_information_is_cuda_without_a_name(tmp_path):
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/nvidiactl").write_text("")
    assert has_cuda(tmp_path) and gpu_models(tmp_path) == []
    found = detect(tmp_path)
    assert found.cuda and found.device_name is None and not found.unified_memory


def test_gpu_models_in_bus_order_and_unreadable_lines_skipped(tmp_path):
    fake_host(tmp_path, driver=True, gpus={"0000:b1:00.0": "Model: NVIDIA L40S\n", "0000:17:00.0": H100_INFO,
                                           "0000:20:00.0": "IRQ: 5\n"})
    assert gpu_models(tmp_path) == ["NVIDIA H100 80GB HBM3", "NVIDIA L40S"]


def test_this_host_is_detected_without_errors():
    found = detect_platform()
    assert found.cuda == has_cuda() and found.cores


@pytest.mark.parametrize("name, peer_is_local, device", [
    ("cpu", True, "cpu"), ("cpu", False, "cpu"),
    ("dgx-spark", True, "cpu"), ("dgx-spark", False, "cpu"),
    ("h100-gpudirect", True, "cuda"), ("h100-gpudirect", False, "cuda"),
    ("cuda-no-gpudirect", True, "cuda"), ("cuda-no-gpudirect", False, "cpu"),
])
def test_kv_buffer_device_rule(name, peer_is_local, device):
    chosen, why = PLATFORMS[name].kv_buffer_device(peer_is_local)
    assert chosen == device and why


def test_kv_buffer_reasons_name_what_decided():
    assert "unified memory (NVIDIA GB10)" in PLATFORMS["dgx-spark"].kv_buffer_device()[1]
    assert "GPUDirect RDMA (mlx5_0, mlx5_1)" in PLATFORMS["h100-gpudirect"].kv_buffer_device()[1]
    assert "cuda_ipc" in PLATFORMS["cuda-no-gpudirect"].kv_buffer_device(peer_is_local=True)[1]


def test_presets_by_name_and_contradictions_refused():
    assert platform_named("dgx-spark").unified_memory
    with pytest.raises(ConfigError, match="known: cpu, dgx-spark"):
        platform_named("spark")
    with pytest.raises(ValueError, match="needs cuda=True"):
        Platform(cuda=False, cores=(0,), unified_memory=True)
    with pytest.raises(ValueError, match="GPUDirect RDMA needs an RDMA device"):
        Platform(cuda=True, cores=(0,), gpudirect_rdma=True)


def test_the_ephemeral_port_range_is_read_from_proc_or_is_linuxs_default(tmp_path):
    assert ephemeral_ports(tmp_path) == (32768, 60999)  # nothing to read
    (tmp_path / "proc/sys/net/ipv4").mkdir(parents=True)
    (tmp_path / "proc/sys/net/ipv4/ip_local_port_range").write_text("40000\t50000\n")
    assert ephemeral_ports(tmp_path) == (40000, 50000)
