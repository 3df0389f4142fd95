"""Facts about this host that decide how a node runs, found without importing torch or vllm.

`Platform` is the one seam for what kind of host this is (CPU only, a CUDA GPU, unified memory, GPUDirect
RDMA): `detect_platform()` reads it from this machine, and tests hand a `Platform` of their own to the code
that builds a node's command line (`node.launch.resolve`) to see what it would do on another kind of host.
"""

from __future__ import annotations

import os
import platform as _platform
import signal
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Platform:
    """What kind of host a node runs on.

    `cuda`: an NVIDIA driver is present (a CUDA build of vLLM is expected); `device_name`: the first GPU's
    name; `unified_memory`: CPU and GPU share one memory (DGX Spark's GB10); `gpudirect_rdma`: an RDMA NIC
    can read GPU memory (the nvidia_peermem module is loaded); `cores`: CPU cores this process may use;
    `rdma_devices`: RDMA devices (RoCE, InfiniBand), e.g. ("mlx5_0",).
    """

    cuda: bool
    cores: tuple[int, ...]
    arch: str = "x86_64"
    device_name: str | None = None
    unified_memory: bool = False
    gpudirect_rdma: bool = False
    rdma_devices: tuple[str, ...] = ()

    def kv_buffer_device(self) -> tuple[str, str]:
        """(where NIXL should register KV, why) for `--kv-buffer-device auto`."""
        if not self.cuda:
            return "cpu", "CPU host: KV is in host memory"
        return "cuda", "CUDA host: NIXL reads GPU memory"


RDMA_SYSFS = Path("/sys/class/infiniband")


def rdma_devices(sysfs: Path = RDMA_SYSFS) -> list[str]:
    """RDMA devices (RoCE, InfiniBand) this host has, e.g. ["mlx5_0"]; [] when none."""
    try:
        return sorted(p.name for p in sysfs.iterdir())
    except OSError:
        return []


def detect_platform() -> Platform:
    """This machine's `Platform`."""
    return Platform(cuda=has_cuda(), cores=tuple(usable_cores()), arch=_platform.machine(),
                    rdma_devices=tuple(rdma_devices()))


def has_cuda() -> bool:
    """True when an NVIDIA driver is present (a CUDA build of vLLM is then expected)."""
    return Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia/version").exists()


def usable_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


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
