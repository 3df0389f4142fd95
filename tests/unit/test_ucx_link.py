"""NIXL's UCX settings per link type reach the vLLM server's environment; the node's --env wins."""

from __future__ import annotations

import argparse

import pytest

from disagg import node_cli
from core.errors import ConfigError
from transport.config import TransportSettings, transport_env
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
        TransportSettings(name="nixl", role="prefill", link="carrier-pigeon")


def test_nixl_node_env_has_link_settings_and_explicit_env_wins():
    settings = TransportSettings(name="nixl", role="decode", kv_host="10.0.0.2", kv_port=5602, link="roce",
                                 net_device="mlx5_0:1", env={"UCX_IB_GID_INDEX": "3", "UCX_TLS": "rc,self"})
    env = transport_env(settings)
    assert env["UCX_NET_DEVICES"] == "mlx5_0:1" and env["UCX_IB_GID_INDEX"] == "3"
    assert env["UCX_TLS"] == "rc,self"  # the user's own setting is applied last
    assert env["VLLM_NIXL_SIDE_CHANNEL_HOST"] == "10.0.0.2"


def test_tcp_transport_gets_no_ucx_settings():
    env = transport_env(TransportSettings(name="tcp", role="prefill", link="roce", net_device="mlx5_0:1"))
    assert not any(key.startswith("UCX_") for key in env)


def test_node_cli_offers_every_link():
    parser = argparse.ArgumentParser()
    node_cli.add_node_parser(parser.add_subparsers(), "prefill", "prefill node", run=None)
    args = parser.parse_args(["prefill", "--kv-link", "tcp", "--kv-net-device", "veth0"])
    assert (args.kv_link, args.kv_net_device) == ("tcp", "veth0")
    for link in KV_LINKS:
        parser.parse_args(["prefill", "--kv-link", link])
    with pytest.raises(SystemExit):
        parser.parse_args(["prefill", "--kv-link", "wifi"])
