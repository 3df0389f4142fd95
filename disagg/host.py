"""Facts about this host that decide how a node runs, found without importing torch or vllm."""

from __future__ import annotations

import os
from pathlib import Path


def has_cuda() -> bool:
    """True when an NVIDIA driver is present (a CUDA build of vLLM is then expected)."""
    return Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia/version").exists()


def usable_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))
