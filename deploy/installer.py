"""`disagg up FILE --install`: put this disagg source on every host and run deploy/install.sh there.

A host's install folder is where its `disagg` lives: `DIR/.venv/bin/disagg` means DIR (by default the
same path as this checkout). The source goes over ssh as a tar stream (no .git, .venv or caches); the
install script then creates DIR/.venv with disagg and the right vLLM for that host (CUDA or CPU).
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from pathlib import Path

from deploy.cluster import Cluster
from deploy.remote import Host
from core.errors import ConfigError

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent
INSTALL_TIMEOUT_S = 3600.0
TAR_EXCLUDES = (".git", ".venv", "__pycache__", "*.pyc", ".pytest_cache", "*.egg-info")


def install(cluster: Cluster) -> None:
    """Install on every host the cluster uses (this machine once, from this checkout)."""
    if not (REPO / "deploy" / "install.sh").is_file() or not (REPO / "pyproject.toml").is_file():
        raise ConfigError(f"--install needs a disagg source checkout; {REPO} is not one")
    used = {c.host for c in cluster.components}
    remote = [cluster.hosts[name] for name in sorted(used) if not cluster.hosts[name].is_local]
    for host in remote:
        install_on(host, install_dir(host))
    if any(cluster.hosts[name].is_local for name in used):
        _run_local_install()


def install_dir(host: Host) -> str:
    """DIR for a host whose disagg is DIR/.venv/bin/disagg."""
    path = Path(host.disagg[0])
    if path.parts[-3:] != (".venv", "bin", "disagg"):
        raise ConfigError(f"{host.where}: --install needs its disagg at DIR/.venv/bin/disagg, not {path} "
                          f"(set hosts.{host.name}.disagg)")
    return str(path.parent.parent.parent)


def install_on(host: Host, directory: str) -> None:
    log.info("installing disagg on %s into %s (the first time takes minutes: vLLM and its wheels)",
             host.where, directory)
    excludes = [f"--exclude={pattern}" for pattern in TAR_EXCLUDES]
    tar = subprocess.run(["tar", "-C", str(REPO), "-czf", "-", *excludes, "."], capture_output=True, check=True)
    unpack = host.run(["sh", "-c", f"mkdir -p {shlex.quote(directory)} && tar -xzf - -C {shlex.quote(directory)}"],
                      input_bytes=tar.stdout, timeout_s=600)
    if unpack.returncode != 0:
        raise ConfigError(f"{host.where}: copying the source failed: {unpack.stderr.decode(errors='replace')[-500:]}")
    result = host.run(["bash", f"{directory}/deploy/install.sh"], timeout_s=INSTALL_TIMEOUT_S)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.decode(errors="replace").splitlines()[-15:])
        raise ConfigError(f"{host.where}: deploy/install.sh failed (exit {result.returncode}):\n{tail}")
    log.info("installed on %s", host.where)


def _run_local_install() -> None:
    log.info("installing on this machine (%s)", REPO)
    if subprocess.call(["bash", str(REPO / "deploy" / "install.sh")]) != 0:
        raise ConfigError("deploy/install.sh failed on this machine")
