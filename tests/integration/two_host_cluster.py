"""Two "hosts" (network namespaces spark-01 and spark-02 with sshd, deploy/two_hosts.sh) and clusters
started on them by `disagg up FILE`: prefill in spark-01, decode in spark-02 (both over ssh), the
router and a colocated baseline router in the root namespace. KV goes over the direct veth link `kv0`.
The hosts run the code this process runs (a checkout on PYTHONPATH travels over ssh: the harness's sshd
accepts it). Every cluster runs with a cluster token (`token_file`, one file: the namespaces share the filesystem), so
a direct call to a node needs `Cluster.node_headers`; the tcp cluster's KV servers bind 0.0.0.0 (`kv_bind`).

One cluster at a time (`TwoHostClusters.get(transport)`); stopping one checks that both nodes are
drained, that `disagg down` succeeds and that no process is left in either namespace or here.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.integration.cluster_manager import Cluster, ClusterError, _drained, _processes_with
from tests.support.threaded_server import free_port

REPO = Path(__file__).resolve().parents[2]
HARNESS = REPO / "deploy" / "two_hosts.sh"
HOSTS = ("spark-01", "spark-02")
ADDRESSES = {"spark-01": ("10.77.1.2", "10.77.12.1"), "spark-02": ("10.77.2.2", "10.77.12.2")}
UP_TIMEOUT_S = 600.0
KV_DEVICE = "kv0"


def namespaces_unavailable() -> str | None:
    """Why namespaces cannot be created here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"disagg-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class Harness:
    """deploy/two_hosts.sh with its state in `state_dir`."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.env = {**os.environ, "DISAGG_TWO_HOSTS_DIR": str(state_dir)}

    def run(self, *args: str, timeout_s: float = 300) -> str:
        out = subprocess.run(["bash", str(HARNESS), *args], env=self.env, capture_output=True, text=True,
                             timeout=timeout_s)
        if out.returncode != 0:
            raise ClusterError(f"two_hosts.sh {' '.join(args)} failed: {out.stderr[-2000:]}")
        return out.stdout

    def kv_bytes(self) -> dict[str, tuple[int, int]]:
        """(tx, rx) bytes of each namespace's end of the KV link."""
        counters = {}
        for host in HOSTS:
            stats = f"/sys/class/net/{KV_DEVICE}/statistics"
            out = subprocess.run(["ip", "netns", "exec", host, "cat", f"{stats}/tx_bytes", f"{stats}/rx_bytes"],
                                 capture_output=True, text=True, check=True).stdout.split()
            counters[host] = (int(out[0]), int(out[1]))
        return counters

    def foreign_pids(self, settle_s: float = 10.0) -> dict[str, list[str]]:
        """Processes in each namespace other than its sshd listener (what `disagg down` must leave),
        allowing `settle_s` for ssh sessions that are still closing."""
        deadline_s = time.monotonic() + settle_s
        while any((left := self._foreign_pids_now()).values()) and time.monotonic() < deadline_s:
            time.sleep(0.5)
        return left

    def _foreign_pids_now(self) -> dict[str, list[str]]:
        left = {}
        for host in HOSTS:
            sshd = (self.state_dir / f"sshd-{host}.pid").read_text().strip()
            pids = subprocess.run(["ip", "netns", "pids", host], capture_output=True, text=True).stdout.split()
            others = [p for p in pids if p != sshd and _cmdline(p) is not None]
            left[host] = [f"{p}: {_cmdline(p)}" for p in others]
        return left


def _cmdline(pid: str) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if stat[0] == "Z":
            return None
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return None


def write_token_file(path: Path) -> str:
    """A fresh cluster token in `path`, readable by its owner only (as pre-flight requires)."""
    token = secrets.token_hex(16)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(token + "\n")
    return token


def cluster_file_text(harness: Harness, transport: str, run_dir: Path, router_port: int, baseline_port: int,
                      model_dir: Path, token_file: Path) -> str:
    hosts = ""
    for host, (address, kv_address) in ADDRESSES.items():
        # UCX would use shared memory between namespaces (one filesystem, one /dev/shm): keep it on kv0.
        hosts += (f'[hosts.{host}]\naddress = "{address}"\nkv_address = "{kv_address}"\n'
                  f'env = {{ UCX_TLS = "tcp", UCX_NET_DEVICES = "{KV_DEVICE}" }}\n')
        if transport == "tcp":
            hosts += 'kv_bind = "0.0.0.0"\n'  # the peer still pulls from kv_address, over kv0
    return f"""name = "two-hosts-{transport}"
model = "{model_dir}"
transport = "{transport}"
run_dir = "{run_dir}"
token_file = "{token_file}"
ready_timeout_s = {UP_TIMEOUT_S - 60}
[ssh]
user = "root"
identity_file = "{harness.state_dir / 'id_ed25519'}"
options = ["StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "SendEnv=PYTHONPATH"]
connect_timeout_s = 5
{hosts}
[prefill]
host = "spark-01"
[decode]
host = "spark-02"
[router]
port = {router_port}
baseline_port = {baseline_port}
[engine]
prefix_caching = false
kv_lease_s = 20
"""


def disagg(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "disagg", *args], capture_output=True, text=True, timeout=timeout_s)


@dataclass(frozen=True)
class TwoHostCluster:
    file: Path
    cluster: Cluster  # URLs in the shape the equality helpers take
    router_port: int
    baseline_port: int
    up_s: float


class TwoHostClusters:
    def __init__(self, harness: Harness, model_dir: Path, work_dir: Path) -> None:
        self.harness, self.model_dir, self.work_dir = harness, model_dir, work_dir
        self.current: TwoHostCluster | None = None

    def get(self, transport: str) -> TwoHostCluster:
        if self.current is not None and self.current.cluster.transport == transport:
            return self.current
        self.stop()
        self.current = self._start(transport)
        return self.current

    def _start(self, transport: str) -> TwoHostCluster:
        run_dir = self.work_dir / f"run-{transport}"
        router_port, baseline_port = free_port(), free_port()
        file, token_file = self.work_dir / f"two-hosts-{transport}.toml", self.work_dir / f"token-{transport}"
        token = write_token_file(token_file)
        file.write_text(cluster_file_text(self.harness, transport, run_dir, router_port, baseline_port,
                                          self.model_dir, token_file))
        started_s = time.monotonic()
        up = disagg("up", str(file), timeout_s=UP_TIMEOUT_S)
        if up.returncode != 0:
            disagg("down", str(file))
            raise ClusterError(f"disagg up {file} exited with {up.returncode}:\n{up.stderr[-4000:]}")
        (prefill_http, _), (decode_http, _) = ADDRESSES["spark-01"], ADDRESSES["spark-02"]
        cluster = Cluster(transport=transport, router_url=f"http://127.0.0.1:{router_port}",
                          baseline_url=f"http://127.0.0.1:{baseline_port}",
                          prefill_vllm_url=f"http://{prefill_http}:8100", decode_vllm_url=f"http://{decode_http}:8200",
                          model_name=self.model_dir.name, model_dir=self.model_dir, log_dir=run_dir,
                          cluster_token=token)
        return TwoHostCluster(file, cluster, router_port, baseline_port, time.monotonic() - started_s)

    def stop(self) -> None:
        """Drained, `disagg down` succeeds, nothing left in either namespace or here; else ClusterError."""
        if self.current is None:
            return
        current, self.current = self.current, None
        try:
            drained = _drained(current.cluster)
        finally:
            down = disagg("down", str(current.file), timeout_s=180)
        left = self.harness.foreign_pids()
        left["root"] = _processes_with(f"--port {current.router_port}", f"--port {current.baseline_port}")
        if drained or down.returncode != 0 or any(left.values()):
            raise ClusterError(f"{current.cluster.transport} two-host cluster: still in use {drained}; "
                               f"down exited {down.returncode}: {down.stderr[-1500:]}; processes left {left}")
