"""A host of a cluster as the launcher reaches it: over ssh, or in this process when it is this machine.

`Host.agent(args)` runs `disagg host ARGS` there (see deploy/host_agent.py) and returns the JSON it
prints; for this machine it calls the same verbs in this process (`host_agent.answer`), and a host made
with `attached=True` starts components that die with the launcher. Any failure is a `HostError` naming the
host and what went wrong (unreachable, no disagg there).
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError
from deploy import host_agent, host_components
from deploy.cluster_file import LOCAL, ClusterSpec

log = logging.getLogger(__name__)
SSH_UNREACHABLE = 255  # what ssh exits with when it cannot connect or authenticate
NOT_FOUND = 127  # what the remote shell exits with when the command does not exist


class HostError(ConfigError):
    """Something about one host: unreachable, no disagg there, a command that failed."""


def default_disagg() -> str:
    """The disagg executable next to this interpreter: the path to expect on every host."""
    return str(Path(sys.executable).parent / "disagg")


@dataclass(frozen=True)
class Host:
    """One machine: `address` is its HTTP address (nodes bind it; the router and the launcher call it);
    `ssh_argv` is ssh's command line up to the destination, () for this machine; `disagg` is the command
    that runs disagg there; `attached` (this machine only): components started here die with this process."""

    name: str
    address: str
    ssh_argv: tuple[str, ...] = ()
    disagg: tuple[str, ...] = (sys.executable, "-m", "disagg")
    attached: bool = False

    @property
    def is_local(self) -> bool:
        return not self.ssh_argv

    @property
    def where(self) -> str:
        return f"{self.name} ({self.ssh_argv[-1]})" if self.ssh_argv else f"{self.name} (this machine)"

    def command(self, argv: list[str]) -> list[str]:
        """The local command line that runs `argv` on this host."""
        if self.is_local:
            return argv
        return [*self.ssh_argv, "--", shlex.join(argv)]

    def run(self, argv: list[str], *, timeout_s: float = 60.0, input_bytes: bytes | None = None
            ) -> subprocess.CompletedProcess[bytes]:
        cmd = self.command(argv)
        log.debug("%s: %s", self.name, shlex.join(cmd))
        try:
            return subprocess.run(cmd, input=input_bytes, capture_output=True, timeout=timeout_s,
                                  stdin=None if input_bytes is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise HostError(f"{self.where}: no answer in {timeout_s:.0f} s to: {shlex.join(argv)}") from None
        except FileNotFoundError as exc:
            raise HostError(f"{self.where}: cannot run {exc.filename}") from None

    def agent(self, args: list[str], *, timeout_s: float = 60.0) -> dict:
        """Run `disagg host ARGS` there and return the JSON object it prints last (this machine: the same
        answer, computed in this process; `timeout_s` bounds the ssh call)."""
        if self.is_local:
            try:
                return host_agent.answer(args, attached=self.attached)
            except (OSError, ConfigError) as exc:
                raise HostError(f"{self.where}: `disagg host {args[0]}` failed: {exc}") from None
        result = self.run([*self.disagg, "host", *args], timeout_s=timeout_s)
        stderr = result.stderr.decode(errors="replace").strip()
        if not self.is_local and result.returncode == SSH_UNREACHABLE:
            last = stderr.splitlines()[-1] if stderr else "ssh failed"
            raise HostError(f"{self.where}: unreachable over ssh: {last}")
        if not self.is_local and result.returncode == NOT_FOUND:
            raise HostError(f"{self.where}: disagg is not installed at {self.disagg[0]} "
                            "(run deploy/install.sh there, or `disagg up FILE --install`)")
        lines = result.stdout.decode(errors="replace").strip().splitlines()
        try:
            answer = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            answer = None
        if result.returncode != 0 or not isinstance(answer, dict):
            tail = "\n".join(stderr.splitlines()[-5:])
            raise HostError(f"{self.where}: `disagg host {args[0]}` failed (exit {result.returncode}): {tail}")
        return answer


    def log_tail(self, run_dir: str, name: str, num_lines: int = 20) -> str:
        """The last lines of component `name`'s log there (a note instead when it cannot be read)."""
        if self.is_local:
            return host_components.tail(run_dir, name, num_lines)
        argv = [*self.disagg, "host", "logs", "--run-dir", run_dir, "--name", name, "--lines", str(num_lines)]
        try:
            return self.run(argv, timeout_s=30).stdout.decode(errors="replace")
        except HostError as exc:
            return f"(log not readable: {exc})"


def hosts_of(spec: ClusterSpec, *, attached: bool = False) -> dict[str, Host]:
    """Every host the cluster uses, by name ("local" for a router on this machine). `attached`: what is
    started on this machine dies with this process."""
    hosts = {name: _host(spec, name, attached) for name in spec.hosts}
    if spec.router.host == LOCAL:
        hosts[LOCAL] = Host(name=LOCAL, address="127.0.0.1", attached=attached)
    return hosts


def _host(spec: ClusterSpec, name: str, attached: bool) -> Host:
    h = spec.hosts[name]
    if h.local:
        return Host(name=name, address=h.address, attached=attached)
    return Host(name=name, address=h.address, ssh_argv=tuple(ssh_argv(spec, name)),
                disagg=(h.disagg or default_disagg(),))


def ssh_argv(spec: ClusterSpec, name: str) -> list[str]:
    """ssh's command line up to the destination: never interactive, bounded connect time."""
    h, s = spec.hosts[name], spec.ssh
    argv = ["ssh", "-p", str(h.ssh_port or s.port), "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={max(1, round(s.connect_timeout_s))}", "-o", "LogLevel=ERROR"]
    if s.identity_file:
        argv += ["-i", str(Path(s.identity_file).expanduser()), "-o", "IdentitiesOnly=yes"]
    for option in s.options:
        argv += ["-o", option]
    user = h.ssh_user or s.user
    target = h.ssh_address or h.address
    argv.append(f"{user}@{target}" if user else target)
    return argv
