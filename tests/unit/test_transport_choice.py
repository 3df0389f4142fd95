"""`--transport auto`: the rule and its stated reason, asked of the registered transports in order."""

from __future__ import annotations

from pathlib import Path

import pytest

from transport import registry
from transport.base import Fit, LinkFacts
from transport.facts import is_local_address, rdma_devices
from transport.nixl.plugin import NixlTransport

REMOTE = "192.0.2.1"  # TEST-NET-1: never this host; nothing is sent to it


@pytest.fixture()
def nixl_installed(monkeypatch):
    def set_to(ok: bool) -> None:
        monkeypatch.setattr(NixlTransport, "installed",
                            lambda self: Fit(ok, "NIXL imports" if ok else "NIXL is not installed here"))
    return set_to


def facts(peer: str, local: bool, devices: tuple[str, ...] = ()) -> LinkFacts:
    return LinkFacts(peer_host=peer, peer_is_local=local, rdma_devices=devices)


def test_explicit_choice_is_kept(nixl_installed):
    nixl_installed(False)
    assert registry.choose("tcp", facts(REMOTE, False)).name == "tcp"
    assert registry.choose("nixl", facts(REMOTE, False)).name == "nixl"


def test_auto_without_nixl_is_tcp_and_says_why(nixl_installed):
    nixl_installed(False)
    assert registry.choose("auto", facts("127.0.0.1", True, ("mlx5_0",))).name == "tcp"
    assert any("NIXL is not installed" in why for _, _, why in registry.candidates(facts("127.0.0.1", True)))


def test_auto_on_one_host_is_nixl_over_shared_memory(nixl_installed):
    nixl_installed(True)
    choice = registry.choose("auto", facts("127.0.0.1", True))
    assert choice.name == "nixl" and "shared memory" in choice.reason


def test_auto_to_a_remote_peer_depends_on_rdma_devices(nixl_installed):
    nixl_installed(True)
    assert registry.choose("auto", facts(REMOTE, False, ("mlx5_0",))).name == "nixl"
    assert registry.choose("auto", facts(REMOTE, False)).name == "tcp"
    assert any("no RDMA device" in why for _, _, why in registry.candidates(facts(REMOTE, False)))


def test_local_address_and_rdma_probe(tmp_path: Path):
    assert is_local_address("127.0.0.1") and is_local_address("localhost")
    assert not is_local_address(REMOTE)
    (tmp_path / "mlx5_1").mkdir()
    (tmp_path / "mlx5_0").mkdir()
    assert rdma_devices(tmp_path) == ["mlx5_0", "mlx5_1"]
    assert rdma_devices(tmp_path / "missing") == []


def test_node_with_nixl_missing_picks_tcp_under_auto_and_says_why(tmp_path: Path):
    import json
    import subprocess
    import sys

    stub = tmp_path / "stub" / "nixl"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('NIXL hidden for this test')\n")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"num_hidden_layers": 1, "num_attention_heads": 1, "hidden_size": 8}))
    code = ("import json; from core.host import detect_platform; from decode_node.role import ROLE; "
            "from node.launch import resolve; from node.settings import NodeSettings; "
            "s = NodeSettings.build(role='decode', **ROLE.defaults.as_settings(), transport='auto', "
            f"model={str(model)!r}); c = resolve(s, ROLE, detect_platform(), environ={{}}); "
            "print(json.dumps([c.transport.name, c.transport.reason]))")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": f"{stub.parent}:{root}", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    name, reason = json.loads(out.stdout.strip().splitlines()[-1])
    assert name == "tcp" and "NIXL is not installed" in reason
