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
    code = ("import argparse, json; from disagg import node_cli; p = argparse.ArgumentParser(); "
            "s = p.add_subparsers(); node_cli.add_node_parser(s, 'decode', 'h', None); "
            f"c = node_cli.config_from_args(p.parse_args(['decode', '--transport', 'auto', '--model', {str(model)!r}])); "
            "print(json.dumps([c.transport.name, c.transport_reason]))")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": f"{stub.parent}:{root}", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    name, reason = json.loads(out.stdout.strip().splitlines()[-1])
    assert name == "tcp" and "NIXL is not installed" in reason
