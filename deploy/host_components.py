"""The components one host runs from a cluster's run folder: `NAME.pid` and `NAME.log` there.

`start` runs `disagg ARGS` in its own session with its log, unless the pid file names a live process;
`stop` sends SIGTERM to its process group, waits, then SIGKILLs whatever it spawned that is left; `status`
and `tail` report. A pid file records the process start time, so a reused pid is never taken for a
running component. Each returns what `disagg host VERB` prints as JSON (see deploy/host_agent.py).

A start is detached (the component outlives the launcher: `disagg up FILE`) or attached (it gets SIGTERM
when the thread that started it ends: `disagg up --local`, bench, tests; start from the main thread).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from core import host as host_facts

START_SETTLE_S = 1.0  # a component that dies at once (bad argument) is reported by `start` itself
DISAGG = (sys.executable, "-m", "disagg")  # what a component runs: DISAGG + its arguments


def pid_file(run_dir: str, name: str) -> Path:
    """Where the component `name` records its pid (`~` is this host's user's home)."""
    return Path(run_dir).expanduser() / f"{name}.pid"


def log_file(run_dir: str, name: str) -> Path:
    return pid_file(run_dir, name).with_suffix(".log")


def start_ticks(pid: int) -> int | None:
    """The process' start time (clock ticks since boot), or None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


def running_pid(run_dir: str, name: str) -> int | None:
    """The component's pid while the process its pid file names still runs, else None."""
    try:
        record = json.loads(pid_file(run_dir, name).read_text())
    except (OSError, ValueError):
        return None
    pid = record.get("pid")
    return pid if isinstance(pid, int) and start_ticks(pid) == record.get("start_ticks") else None


def start(run_dir: str, name: str, argv: list[str], *, attached: bool = False) -> dict:
    """Start `disagg ARGV` as `name` unless it runs: {"pid", "started", "log"} (+ "exit_code", "log_tail"
    when it exited within START_SETTLE_S)."""
    path, log_path = pid_file(run_dir, name), log_file(run_dir, name)
    running = running_pid(run_dir, name)
    if running:
        return {"pid": running, "started": False, "log": str(log_path)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n==> {time.strftime('%Y-%m-%d %H:%M:%S')} disagg {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen([*DISAGG, *argv], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=path.parent,
                                preexec_fn=host_facts.die_with_parent if attached else None)
    path.write_text(json.dumps({"pid": proc.pid, "start_ticks": start_ticks(proc.pid), "argv": argv}))
    try:
        code = proc.wait(timeout=START_SETTLE_S)
    except subprocess.TimeoutExpired:
        return {"pid": proc.pid, "started": True, "log": str(log_path)}
    return {"pid": proc.pid, "started": False, "exit_code": code, "log": str(log_path),
            "log_tail": tail(run_dir, name, 15)}


def stop(run_dir: str, name: str, grace_s: float) -> dict:
    """SIGTERM the component's group (a node's supervisor stops vLLM), then SIGKILL what is left of it:
    {"stopped", "pid", "left": pids still there}."""
    pid = running_pid(run_dir, name)
    if pid is None:
        pid_file(run_dir, name).unlink(missing_ok=True)
        return {"stopped": False, "left": []}
    tree = {p: start_ticks(p) for p in host_facts.descendants(pid)}
    groups = {_pgid(p) for p in tree} - {None, os.getpgid(0)}
    _signal_groups({pid}, signal.SIGTERM)
    deadline_s = time.monotonic() + grace_s
    while start_ticks(pid) is not None and time.monotonic() < deadline_s:
        time.sleep(0.2)
    _signal_groups(groups, signal.SIGKILL)
    for p, ticks in tree.items():
        if start_ticks(p) == ticks:  # still the same process, not a reused pid
            _kill(p)
    deadline_s = time.monotonic() + 5.0
    while (left := [p for p, t in tree.items() if t and start_ticks(p) == t]) and time.monotonic() < deadline_s:
        time.sleep(0.1)
    _reap(pid)
    pid_file(run_dir, name).unlink(missing_ok=True)
    return {"stopped": True, "pid": pid, "left": left}


def status(run_dir: str, names: list[str]) -> dict:
    """{"components": {name: {"pid": pid or None, "log": path}}}."""
    return {"components": {n: {"pid": running_pid(run_dir, n), "log": str(log_file(run_dir, n))} for n in names}}


def tail(run_dir: str, name: str, num_lines: int) -> str:
    """The last `num_lines` lines of the component's log ("" when there is none)."""
    try:
        return "\n".join(log_file(run_dir, name).read_text(errors="replace").splitlines()[-num_lines:])
    except OSError:
        return ""


def _reap(pid: int) -> None:
    """Collect the exit status of a component this process started (no zombie left behind)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


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
