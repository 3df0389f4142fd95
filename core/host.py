"""Facts about this host that decide how a node runs, found without importing torch or vllm.

`Platform` is the one seam for what kind of host this is (CPU only, a CUDA GPU, unified memory, GPUDirect
RDMA): `detect_platform()` reads it from this machine's /proc and /sys, and tests hand a `Platform` of their
own (`PLATFORMS`: a DGX Spark, an H100 host with GPUDirect RDMA, ...) to the code that builds a node's
command line (`node.launch.resolve`) or `disagg doctor` to see what it would do on another kind of host.
`Platform.kv_buffer_device` is the one rule for where NIXL registers KV. The rest of the module is process
plumbing the supervisors share (core binding, parent-death signal, process trees).
"""

from __future__ import annotations

import os
import platform as _platform
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError

ROOT = Path("/")
RDMA_SYSFS = Path("/sys/class/infiniband")
# Kernel modules that let an RDMA NIC register GPU memory (GPUDirect RDMA): NVIDIA's, and Mellanox's older one.
PEER_MEMORY_MODULES = ("nvidia_peermem", "nv_peer_mem")
# GPUs whose memory is the host's (one LPDDR pool, no VRAM): NIXL cannot register it as GPU memory.
UNIFIED_MEMORY_GPUS = ("GB10",)


@dataclass(frozen=True)
class Platform:
    """What kind of host a node runs on.

    `cuda`: an NVIDIA driver is present (a CUDA build of vLLM is expected); `cores`: CPU cores this process
    may use; `arch`: `platform.machine()` ("x86_64", "aarch64"); `device_name`: the first GPU's model name
    (e.g. "NVIDIA GB10"); `unified_memory`: CPU and GPU share one memory (DGX Spark's GB10);
    `gpudirect_rdma`: an RDMA NIC can read GPU memory (a peer-memory module is loaded and there is an RDMA
    device); `rdma_devices`: RDMA devices (RoCE, InfiniBand), e.g. ("mlx5_0",). ValueError when the facts
    contradict each other (GPU facts without CUDA, GPUDirect without an RDMA device or on unified memory).
    """

    cuda: bool
    cores: tuple[int, ...]
    arch: str = "x86_64"
    device_name: str | None = None
    unified_memory: bool = False
    gpudirect_rdma: bool = False
    rdma_devices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.cuda and (self.device_name or self.unified_memory or self.gpudirect_rdma):
            raise ValueError("a GPU name, unified memory or GPUDirect RDMA needs cuda=True")
        if self.gpudirect_rdma and (self.unified_memory or not self.rdma_devices):
            raise ValueError("GPUDirect RDMA needs an RDMA device and a GPU with memory of its own")

    def kv_buffer_device(self, peer_is_local: bool = False) -> tuple[str, str]:
        """(where NIXL registers KV, why) for `--kv-buffer-device auto`; the peer node is on this host or not.

        The rule (vLLM's NixlConnector takes "cuda" or "cpu" on CUDA: `_NIXL_SUPPORTED_DEVICE` in
        vllm/distributed/kv_transfer/kv_connector/v1/nixl/utils.py; "cpu" stages KV in a host buffer "when
        device memory can not be registered under nixl", nixl/base_worker.py):

        - no CUDA: "cpu", KV already is in host memory;
        - unified memory (GB10): "cpu", whatever the peer. GPU allocations there cannot be reached by PCIe
          devices, so GPUDirect RDMA, nvidia-peermem, dma-buf and GDRCopy do not work and NVIDIA advises
          cudaHostAlloc buffers (NVIDIA forum, "DGX Spark GPUDirect RDMA", t/348787); NIXL's backend fails
          at start with GPU memory on a Spark pair (NIXL_ERR_BACKEND, NVIDIA/dgx-spark-playbooks#82);
        - GPUDirect RDMA: "cuda", the NIC reads and writes GPU memory (nvidia_peermem);
        - no GPUDirect, peer on this host: "cuda", UCX moves GPU memory between the two processes with
          cuda_ipc, no NIC involved (vLLM's default, what its one-host P/D tests run);
        - no GPUDirect, remote peer: "cpu", an RDMA NIC cannot read GPU memory without GPUDirect, and over
          TCP UCX would stage through host memory anyway; a pinned host buffer is the supported path.

        Only NIXL uses it; the tcp transport stages GPU KV through pinned host memory itself. A host with
        GPUDirect over dma-buf but without a peer-memory module is taken for one without (set
        `--kv-buffer-device cuda` there).
        """
        if not self.cuda:
            return "cpu", "CPU host: KV is in host memory"
        if self.unified_memory:
            return "cpu", (f"unified memory ({self.device_name or 'GPU'}): NIXL cannot register GPU memory here "
                           "(no GPUDirect RDMA); a pinned host buffer")
        if self.gpudirect_rdma:
            return "cuda", f"GPUDirect RDMA ({', '.join(self.rdma_devices)}): the NIC reads GPU memory"
        if peer_is_local:
            return "cuda", "no GPUDirect RDMA, but the peer is on this host: UCX cuda_ipc moves GPU memory"
        return "cpu", "no GPUDirect RDMA and the peer is remote: the NIC cannot read GPU memory; a pinned host buffer"


PLATFORMS: dict[str, Platform] = {
    "cpu": Platform(cuda=False, cores=(0, 1)),
    # DGX Spark: GB10 (20 Arm cores, 128 GB unified LPDDR5X), ConnectX-7 (two ports, RoCE), no GPUDirect RDMA.
    "dgx-spark": Platform(cuda=True, cores=tuple(range(20)), arch="aarch64", device_name="NVIDIA GB10",
                          unified_memory=True,
                          rdma_devices=("roceP2p1s0f0", "roceP2p1s0f1", "rocep1s0f0", "rocep1s0f1")),
    "h100-gpudirect": Platform(cuda=True, cores=tuple(range(32)), device_name="NVIDIA H100 80GB HBM3",
                               gpudirect_rdma=True, rdma_devices=("mlx5_0", "mlx5_1")),
    # A GPU box without an RDMA NIC (or without nvidia_peermem), e.g. a cloud VM.
    "cuda-no-gpudirect": Platform(cuda=True, cores=tuple(range(16)), device_name="NVIDIA L40S"),
}


def platform_named(name: str) -> Platform:
    """A simulated host from `PLATFORMS`; ConfigError naming the known ones otherwise."""
    try:
        return PLATFORMS[name]
    except KeyError:
        raise ConfigError(f"unknown platform {name!r}; known: {', '.join(PLATFORMS)}") from None


def detect_platform(root: Path = ROOT, *, machine: str | None = None,
                    cores: tuple[int, ...] | None = None) -> Platform:
    """This machine's `Platform`, from the files under `root` (a fake tree in tests): the NVIDIA driver
    (/dev/nvidiactl, /proc/driver/nvidia), its GPUs' model names (/proc/driver/nvidia/gpus/*/information),
    RDMA devices (/sys/class/infiniband) and peer-memory modules (/sys/module). `machine` and `cores`
    default to this process's (`platform.machine()`, its CPU affinity)."""
    cuda = has_cuda(root)
    names = gpu_models(root) if cuda else []
    devices = tuple(rdma_devices(root / RDMA_SYSFS.relative_to(ROOT)))
    device_name = names[0] if names else None
    unified = is_unified_memory(device_name)
    gpudirect = cuda and not unified and bool(devices) and peer_memory_module(root) is not None
    return Platform(cuda=cuda, cores=tuple(usable_cores()) if cores is None else cores,
                    arch=machine or _platform.machine(), device_name=device_name, unified_memory=unified,
                    gpudirect_rdma=gpudirect, rdma_devices=devices)


def has_cuda(root: Path = ROOT) -> bool:
    """True when an NVIDIA driver is present (a CUDA build of vLLM is then expected)."""
    return (root / "dev/nvidiactl").exists() or (root / "proc/driver/nvidia/version").exists()


def gpu_models(root: Path = ROOT) -> list[str]:
    """The NVIDIA GPUs' model names in bus order, e.g. ["NVIDIA H100 80GB HBM3"] (the `Model:` line of
    /proc/driver/nvidia/gpus/BUS/information, NVIDIA driver README, "Using the /proc File System
    Interface"); [] when the driver lists none."""
    models = []
    for info in sorted((root / "proc/driver/nvidia/gpus").glob("*/information")):
        try:
            lines = info.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            key, _, value = line.partition(":")
            if key.strip() == "Model" and value.strip():
                models.append(value.strip())
                break
    return models


def is_unified_memory(device_name: str | None) -> bool:
    """True for a GPU without memory of its own (`UNIFIED_MEMORY_GPUS`, matched as a word of the name)."""
    words = (device_name or "").replace("-", " ").split()
    return any(model in words for model in UNIFIED_MEMORY_GPUS)


def peer_memory_module(root: Path = ROOT) -> str | None:
    """The loaded kernel module that gives RDMA NICs access to GPU memory (`PEER_MEMORY_MODULES`), or None."""
    for name in PEER_MEMORY_MODULES:
        if (root / "sys/module" / name).is_dir():
            return name
    return None


def rdma_devices(sysfs: Path = RDMA_SYSFS) -> list[str]:
    """RDMA devices (RoCE, InfiniBand) this host has, e.g. ["mlx5_0"]; [] when none."""
    try:
        return sorted(p.name for p in sysfs.iterdir())
    except OSError:
        return []


def ephemeral_ports(root: Path = ROOT) -> tuple[int, int]:
    """The kernel's ephemeral port range, first and last (`net.ipv4.ip_local_port_range`; Linux's default
    32768-60999 when it cannot be read): ports an outgoing connection may take as its local end, so a server
    that listens on one may find it taken when it restarts."""
    try:
        low, high = (root / "proc/sys/net/ipv4/ip_local_port_range").read_text().split()[:2]
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def usable_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def terminate(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGTERM `proc`, wait up to `timeout_s` seconds, then SIGKILL it and reap it."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def die_with_parent() -> None:
    """In a child before exec: get SIGTERM when the parent dies, so that no server outlives a killed
    supervisor or launcher (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def descendants(root_pid: int) -> list[int]:
    """`root_pid` and every process below it (from /proc; processes that vanish meanwhile are skipped)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def repin_threads(root_pid: int, cores: set[int], process_name: str) -> int:
    """Move every thread of the processes named `process_name` under `root_pid` that runs outside
    `cores` back onto them; returns how many threads moved."""
    moved = 0
    for pid in descendants(root_pid):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() != process_name:
                continue
            tids = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
        except OSError:
            continue
        for tid in tids:
            try:
                if not os.sched_getaffinity(tid) <= cores:
                    os.sched_setaffinity(tid, cores)
                    moved += 1
            except OSError:
                continue
    return moved


def parse_cores(spec: str) -> set[int]:
    """'0', '0-3' or '0,2-3' -> {0, ...}."""
    cores: set[int] = set()
    for part in spec.split(","):
        first, _, last = part.strip().partition("-")
        cores.update(range(int(first), int(last or first) + 1))
    return cores
