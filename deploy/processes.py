"""Child processes of a launcher: started in their own process group with a log file, stopped whole."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.host import die_with_parent

log = logging.getLogger(__name__)


@dataclass
class ManagedProcess:
    """One component (prefill, decode, router, ...) run as `argv`, logging to `log_path`."""

    name: str
    argv: list[str]
    health_url: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None
    extra_pgids: set[int] = field(default_factory=set)  # groups it spawned (vLLM servers), killed with it

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.popen = subprocess.Popen(self.argv, stdout=log_file, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env={**os.environ, **self.env},
                                          start_new_session=True, preexec_fn=die_with_parent)
        log.debug("started %s (pid %d): %s", self.name, self.popen.pid, " ".join(self.argv))

    def exit_code(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def log_tail(self, num_lines: int = 20) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-num_lines:])

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM the group and wait; SIGKILL whatever is left, including groups it spawned."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            _signal_group(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s; killing it", self.name, grace_s)
        for pgid in (self.popen.pid, *self.extra_pgids):
            _signal_group(pgid, signal.SIGKILL)
        self.popen.wait()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_all(processes: list[ManagedProcess], grace_s: float = 30.0) -> None:
    """Stop in reverse start order (router first, so no new work reaches the nodes)."""
    for proc in reversed(processes):
        started_s = time.monotonic()
        proc.stop(grace_s)
        log.info("stopped %s in %.1f s", proc.name, time.monotonic() - started_s)
