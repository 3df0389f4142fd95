"""NIXL's UCX settings per link type reach the vLLM server's environment; the node's --env wins."""

from __future__ import annotations

import argparse

import pytest

from node.cli import add_node_parser
from prefill_node.role import ROLE
from core.errors import ConfigError
from transport.base import KvLink
from transport.nixl.plugin import NixlTransport
from transport.tcp.plugin import TcpTransport
from transport.nixl.ucx_link import KV_LINKS, ucx_env


@pytest.mark.parametrize(("link", "device", "tls"), [
    ("roce", "cpu", "rc,sm,self"),
    ("ib", "cpu", "rc,ud,sm,self"),
    ("tcp", "cpu", "tcp,self"),
    ("shm", "cpu", "sm,self"),
    ("tcp", "cuda", "tcp,self,cuda_copy"),
    ("roce", "cuda", "rc,sm,self,cuda_copy,cuda_ipc,gdr_copy"),
])
def test_each_link_sets_ucx_transports(link, device, tls):
    assert ucx_env(link, device) == {"UCX_TLS": tls}


def test_auto_leaves_ucx_alone_and_net_device_is_passed():
    assert ucx_env("auto") == {}
    assert ucx_env("auto", net_device="mlx5_0:1") == {"UCX_NET_DEVICES": "mlx5_0:1"}


def test_unknown_link_is_a_config_error():
    with pytest.raises(ConfigError, match="kv link must be one of"):
        NixlTransport().check(KvLink(role="prefill", link="carrier-pigeon"))


def test_nixl_node_env_has_link_settings_and_explicit_env_wins(tmp_path):
    import json

    from core.host import Platform
    from decode_node.role import ROLE as DECODE
    from node.launch import resolve
    from node.settings import NodeSettings

    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 2, "num_attention_heads": 4,
                                                      "hidden_size": 64}))
    settings = NodeSettings.build(role="decode", **DECODE.defaults.as_settings(), model=str(tmp_path),
                                  transport="nixl", kv_host="10.0.0.2", kv_link="roce", kv_net_device="mlx5_0:1",
                                  env={"UCX_IB_GID_INDEX": "3", "UCX_TLS": "rc,self"})
    env = resolve(settings, DECODE, Platform(cuda=False, cores=(0, 1)), environ={}).vllm_env({})
    assert env["UCX_NET_DEVICES"] == "mlx5_0:1" and env["UCX_IB_GID_INDEX"] == "3"
    assert env["UCX_TLS"] == "rc,self"  # the user's own setting is applied last
    assert env["VLLM_NIXL_SIDE_CHANNEL_HOST"] == "10.0.0.2"


def test_tcp_transport_gets_no_ucx_settings():
    env = TcpTransport().env(KvLink(role="prefill", link="roce", net_device="mlx5_0:1"))
    assert not any(key.startswith("UCX_") for key in env)


def test_node_cli_offers_every_link():
    parser = argparse.ArgumentParser()
    add_node_parser(parser.add_subparsers(), ROLE)
    args = parser.parse_args(["prefill", "--kv-link", "tcp", "--kv-net-device", "veth0"])
    assert (args.kv_link, args.kv_net_device) == ("tcp", "veth0")
    for link in KV_LINKS:
        parser.parse_args(["prefill", "--kv-link", link])
    with pytest.raises(SystemExit):
        parser.parse_args(["prefill", "--kv-link", "wifi"])
