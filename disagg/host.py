"""Facts about this host that decide how a node runs, found without importing torch or vllm."""

from __future__ import annotations

import os
import signal
from pathlib import Path


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
