"""NIXL and UCX as this host sees them: the `nixl` transport's section of `disagg doctor`.

`probe_in_child()` runs `python -m transport.nixl.native_probe` (`transport.nixl.child`), so that a native
crash or a missing library costs one probe, not the doctor. The child answers {"nixl": ..., "ucx": ...}: NIXL's
version, backend wheel, plugins and whether its UCX backend starts; UCX asked through `ucx_info` when it is on
PATH, else through the libucp inside the NIXL wheel (or the system's) with ctypes: its version and the
transport resources a UCP context opens (`ucp_context_print_info`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from transport.nixl import child
from transport.nixl.library import import_nixl

PROBE_TIMEOUT_S = 180.0
UCP_PARAM_FIELD_FEATURES = 1
UCP_FEATURES_TAG_RMA = (1 << 0) | (1 << 1)
_RESOURCE_LINE = re.compile(r"resource\s+\d+\s*:.*--\s*(\S+)")


def probe_nixl() -> dict[str, Any]:
    """NIXL's version, the backend wheel it loaded, its plugins and whether a UCX backend starts."""
    try:
        version = importlib.metadata.version("nixl")
    except importlib.metadata.PackageNotFoundError:
        return {"status": "not installed", "importable": False, "reason": "no `nixl` package"}
    try:
        nixl, nixl_agent, nixl_agent_config = import_nixl()
    except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
        return {"status": "unavailable", "importable": False, "version": version,
                "reason": f"import failed: {type(exc).__name__}: {exc}"}
    package = getattr(nixl, "_pkg", None)
    info: dict[str, Any] = {"status": "ok", "importable": True, "version": version,
                            "backend_package": getattr(package, "__name__", "unknown"),
                            "libs_dir": _libs_dir(package)}
    agent = nixl_agent("disagg-doctor", nixl_agent_config(backends=[]))
    info["plugins"] = list(agent.get_plugin_list())
    try:
        agent.create_backend("UCX")
        info["ucx_backend"] = "ok"
        info["ucx_mem_types"] = list(agent.get_backend_mem_types("UCX"))
    except Exception as exc:  # noqa: BLE001
        info["status"] = "unavailable"
        info["ucx_backend"] = info["reason"] = f"UCX backend failed: {type(exc).__name__}: {exc}"
    return info


def _libs_dir(package: Any) -> str | None:
    """The `<wheel>.libs` folder auditwheel put NIXL's bundled libraries (UCX included) in."""
    if package is None or not getattr(package, "__file__", None):
        return None
    libs = Path(package.__file__).resolve().parent.parent / f"{package.__name__}.libs"
    return str(libs) if libs.is_dir() else None


def bundled_libs_dir() -> str | None:
    """A NIXL wheel's library folder found without importing NIXL (for when its import fails)."""
    import importlib.util

    for name in ("nixl_cu13", "nixl_cu12"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            libs = Path(spec.origin).resolve().parent.parent / f"{name}.libs"
            if libs.is_dir():
                return str(libs)
    return None


def probe_ucx(libs_dir: str | None) -> dict[str, Any]:
    """UCX's version and transports, from `ucx_info` or from libucp itself."""
    ucx_info = shutil.which("ucx_info")
    if ucx_info:
        return _from_ucx_info(ucx_info)
    library = _find_libucp(libs_dir)
    if library is None:
        return {"status": "unavailable", "reason": "no ucx_info on PATH and no libucp found"}
    version, transports = _query_libucp(library)
    return {"status": "ok", "source": f"libucp {library}", "version": version, "transports": transports}


def _from_ucx_info(ucx_info: str) -> dict[str, Any]:
    version_text = subprocess.run([ucx_info, "-v"], capture_output=True, text=True, timeout=30).stdout
    devices_text = subprocess.run([ucx_info, "-d"], capture_output=True, text=True, timeout=60).stdout
    version = re.search(r"version\s*[:=]?\s*([\d.]+)", version_text, re.IGNORECASE)
    transports, transport = [], None
    for line in devices_text.splitlines():
        if match := re.match(r"#\s+Transport:\s*(\S+)", line):
            transport = match.group(1)
        elif (match := re.match(r"#\s+Device:\s*(\S+)", line)) and transport:
            transports.append(f"{transport}/{match.group(1)}")
    return {"status": "ok", "source": ucx_info, "version": version.group(1) if version else "unknown",
            "transports": transports}


def _find_libucp(libs_dir: str | None) -> str | None:
    if libs_dir:
        found = sorted(Path(libs_dir).glob("libucp*.so*"))
        if found:
            return str(found[0])
    return ctypes.util.find_library("ucp")


def _query_libucp(library: str) -> tuple[str, list[str]]:
    """(version, ["tcp/lo", "cma/memory", ...]) from a UCP context opened with UCX's configuration."""
    for sibling in sorted(Path(library).parent.glob("libucs*.so*"))[:1]:
        ctypes.CDLL(str(sibling), mode=ctypes.RTLD_GLOBAL)
    ucp = ctypes.CDLL(library, mode=ctypes.RTLD_GLOBAL)
    ucp.ucp_get_version_string.restype = ctypes.c_char_p
    version = ucp.ucp_get_version_string().decode()
    major, minor, release = ctypes.c_uint(), ctypes.c_uint(), ctypes.c_uint()
    ucp.ucp_get_version(ctypes.byref(major), ctypes.byref(minor), ctypes.byref(release))
    config, context = ctypes.c_void_p(), ctypes.c_void_p()
    if ucp.ucp_config_read(None, None, ctypes.byref(config)) != 0:
        raise RuntimeError("ucp_config_read failed")
    params = (ctypes.c_uint64 * 64)()  # ucp_params_t, zeroed beyond field_mask and features
    params[0], params[1] = UCP_PARAM_FIELD_FEATURES, UCP_FEATURES_TAG_RMA
    status = ucp.ucp_init_version(major, minor, params, config, ctypes.byref(context))
    ucp.ucp_config_release(config)
    if status != 0:
        raise RuntimeError(f"ucp_init failed (status {status})")
    try:
        text = _print_info(ucp, context)
    finally:
        ucp.ucp_cleanup(context)
    return version, [m.group(1) for m in map(_RESOURCE_LINE.search, text.splitlines()) if m]


def _print_info(ucp: ctypes.CDLL, context: ctypes.c_void_p) -> str:
    libc = ctypes.CDLL(None)
    libc.fdopen.restype = ctypes.c_void_p
    read_fd, write_fd = os.pipe()
    stream = libc.fdopen(write_fd, b"w")
    ucp.ucp_context_print_info(context, ctypes.c_void_p(stream))
    libc.fclose(ctypes.c_void_p(stream))
    with os.fdopen(read_fd, "rb") as reader:
        return reader.read().decode(errors="replace")


def probe_in_child(timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """The nixl section of `disagg doctor`, with UCX's findings as its `ucx` sub-section (`sections`).

    Never raises: a child that crashes, answers nothing or runs past `timeout_s` seconds makes both sections
    `status: unavailable` (and `importable: False`) with the reason.
    """
    try:
        found = child.run("transport.nixl.native_probe", (), timeout_s)
        nixl_info, ucx_info = found["nixl"], found["ucx"]
    except Exception as exc:  # noqa: BLE001 - the doctor reports, it does not crash
        reason = str(exc) if isinstance(exc, child.ChildProbeError) else f"{type(exc).__name__}: {exc}"
        nixl_info = {"status": "unavailable", "importable": False, "reason": reason}
        ucx_info = {"status": "unavailable", "reason": reason}
    return {**nixl_info, "sections": {"ucx": ucx_info}}


def main() -> int:
    """The child: probe NIXL, then UCX (in NIXL's wheel when it imported), and answer both."""
    nixl_info = _guarded(probe_nixl)
    ucx_info = _guarded(lambda: probe_ucx(nixl_info.get("libs_dir") or bundled_libs_dir()))
    child.answer({"nixl": nixl_info, "ucx": ucx_info})
    return 0


def _guarded(probe: Any) -> dict[str, Any]:
    try:
        return probe()
    except Exception as exc:  # noqa: BLE001 - each probe reports, never raises
        return {"status": "unavailable", "reason": f"{type(exc).__name__}: {exc}"}


if __name__ == "__main__":
    sys.exit(main())
