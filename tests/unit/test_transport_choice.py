"""`--transport auto`: the rule and its stated reason."""

from __future__ import annotations

from pathlib import Path

from transport.choice import choose, is_local_address, rdma_devices


def test_explicit_choice_is_kept():
    assert choose("tcp", "10.9.9.9").name == "tcp"
    assert choose("nixl", "10.9.9.9", has_nixl=False).name == "nixl"


def test_auto_without_nixl_is_tcp_and_says_why():
    choice = choose("auto", "127.0.0.1", has_nixl=False, devices=["mlx5_0"])
    assert choice.name == "tcp" and "NIXL is not installed" in choice.reason


def test_auto_on_one_host_is_nixl_over_shared_memory():
    choice = choose("auto", "127.0.0.1", has_nixl=True, devices=[])
    assert choice.name == "nixl" and "shared memory" in choice.reason


def test_auto_to_a_remote_peer_depends_on_rdma_devices():
    remote = "192.0.2.1"  # TEST-NET-1: never this host; nothing is sent to it
    assert choose("auto", remote, has_nixl=True, devices=["mlx5_0"]).name == "nixl"
    choice = choose("auto", remote, has_nixl=True, devices=[])
    assert choice.name == "tcp" and "no RDMA device" in choice.reason


def test_local_address_and_rdma_probe(tmp_path: Path):
    assert is_local_address("127.0.0.1") and is_local_address("localhost")
    assert not is_local_address("192.0.2.1")
    (tmp_path / "mlx5_1").mkdir()
    (tmp_path / "mlx5_0").mkdir()
    assert rdma_devices(tmp_path) == ["mlx5_0", "mlx5_1"]
    assert rdma_devices(tmp_path / "missing") == []
