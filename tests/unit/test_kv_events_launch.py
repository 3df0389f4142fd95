"""A node with `kv_events`: vLLM gets a `--kv-events-config` (publisher and replay on ephemeral ports of the
node's address) and the block hash a router can compute (`--prefix-caching-hash-algo sha256_cbor`), parsed
by vLLM's own parser; PYTHONHASHSEED is kept from vLLM; the flag exists wherever engine settings do; and a
cluster file that routes prefill nodes by prefix passes the policy to its router."""

from __future__ import annotations

import importlib.util
import json

import pytest

from core.errors import ConfigError
from core.host import PLATFORMS
from deploy import cluster_file, cluster_plan
from node.launch import VLLM_SERVER_MODULE, resolve
from node.settings import EngineSettings, NodeSettings
from prefill_node.role import ROLE as PREFILL
from tests.support.cluster_launches import SMOLLM2, disagg_parser

pytestmark = pytest.mark.timeout(60)


def launch(kv_events: bool = True, host: str = "10.0.0.11", env: dict[str, str] | None = None):
    settings = NodeSettings.build(role="prefill", model=str(SMOLLM2), transport="tcp", host=host, port=8100,
                                  info_port=8101, kv_port=5601, env=env or {},
                                  engine=EngineSettings(kv_events=kv_events))
    return resolve(settings, PREFILL, PLATFORMS["cpu"], environ={})


def test_kv_events_add_the_events_config_and_the_hash_algorithm():
    node = launch()
    cmd = node.vllm_command()
    config = json.loads(cmd[cmd.index("--kv-events-config") + 1])
    assert config == {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": "tcp://*:0",
                      "replay_endpoint": "tcp://*:0", "topic": "kv"}
    assert cmd[cmd.index("--prefix-caching-hash-algo") + 1] == "sha256_cbor"
    env = node.vllm_env({"PYTHONHASHSEED": "42", "PATH": "/bin"})
    assert env["VLLM_HOST_IP"] == "10.0.0.11" and "PYTHONHASHSEED" not in env
    assert "VLLM_HOST_IP" not in launch(host="0.0.0.0").vllm_env({})  # every interface: vLLM's own choice
    off = launch(kv_events=False)
    assert "--kv-events-config" not in off.vllm_command() and "VLLM_HOST_IP" not in off.vllm_env({})
    assert off.vllm_env({"PYTHONHASHSEED": "42"})["PYTHONHASHSEED"] == "42"


def test_vllms_parser_takes_the_events_flags():
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed")
    from tests.support import vllm_cli

    args = vllm_cli.parse_server_command(launch().vllm_command(), VLLM_SERVER_MODULE)
    assert args.kv_events_config.enable_kv_cache_events and args.kv_events_config.endpoint == "tcp://*:0"
    assert args.prefix_caching_hash_algo == "sha256_cbor"


def test_kv_events_have_a_flag_on_every_node_command():
    parser = disagg_parser()
    for argv in (["prefill", "--kv-events"], ["decode", "--kv-events"], ["up", "--local", "--kv-events"]):
        assert parser.parse_args(argv).kv_events is True


def test_a_cluster_files_router_policies_reach_the_router_command():
    data = {"name": "c", "model": str(SMOLLM2), "transport": "tcp", "hosts": {"h": {"address": "127.0.0.1"}},
            "prefill": [{"host": "h", "port": 8100, "info_port": 8101, "kv_port": 5601},
                        {"host": "h", "port": 8110, "info_port": 8111, "kv_port": 5611}],
            "decode": {"host": "h"}, "engine": {"kv_events": True},
            "router": {"prefill_policy": "prefix_aware"}}
    spec = cluster_file.validate(data, "t: ")
    [router] = [c for c in cluster_plan.plan(spec) if c.role == "router"]
    assert router.args[router.args.index("--prefill-policy") + 1] == "prefix_aware"
    assert "--decode-policy" not in router.args  # the default stays implicit
    with pytest.raises(ConfigError, match="kv_events"):
        cluster_file.validate({**data, "engine": {}}, "t: ")
    with pytest.raises(ConfigError, match="prefill_policy"):
        cluster_file.validate({**data, "router": {"prefill_policy": "fastest"}}, "t: ")
