"""Cluster files: validation names the file, the field and the problem; the plan gives each node its
HTTP and KV addresses (and KV bind address) and its host's environment, and every node and router the
cluster token file; ssh command lines carry the file's settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy import cluster_file, cluster_plan
from deploy.remote import hosts_of, ssh_argv
from core.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
BASE = """
name = "pair"
model = "/models/m"
transport = "tcp"
[ssh]
user = "me"
identity_file = "/keys/k"
options = ["StrictHostKeyChecking=no"]
[hosts.spark-01]
address = "10.0.0.1"
kv_address = "10.9.0.1"
env = { UCX_TLS = "tcp", UCX_NET_DEVICES = "kv0" }
[hosts.spark-02]
address = "10.0.0.2"
ssh_port = 2222
[prefill]
host = "spark-01"
[decode]
host = "spark-02"
[router]
baseline_port = 8001
"""


def load_text(tmp_path: Path, text: str) -> cluster_file.ClusterSpec:
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return cluster_file.load(path)


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    return str(info.value)


@pytest.mark.parametrize("name", ["spark-pair.toml", "two-linux-tcp.toml"])
def test_examples_load(name):
    spec = cluster_file.load(EXAMPLES / name)
    assert spec.prefill.host != spec.decode.host
    assert len(cluster_plan.plan(spec)) >= 3


@pytest.mark.parametrize("name", ["spark-pair.toml", "two-linux-tcp.toml"])
def test_examples_protect_the_nodes_with_a_token_file(name):
    spec = cluster_file.load(EXAMPLES / name)
    assert spec.token_file == "~/.config/disagg/cluster-token"
    assert all("--cluster-token-file" in c.args for c in cluster_plan.plan(spec))


def test_spark_example_keeps_kv_in_host_memory_on_the_direct_link():
    spec = cluster_file.load(EXAMPLES / "spark-pair.toml")
    assert spec.engine.kv_buffer_device == "cpu" and spec.transport == "nixl"
    for host in spec.hosts.values():
        assert host.kv != host.address and {"UCX_NET_DEVICES", "UCX_TLS", "UCX_IB_GID_INDEX"} <= set(host.env)


@pytest.mark.parametrize("edit,expected", [
    (("[decode]\nhost = \"spark-02\"", "[decode]\nhost = \"spark-02\"\nprot = 1"), "decode.prot: unknown field"),
    (("host = \"spark-01\"", "host = \"spark-03\""),
     "prefill.host: 'spark-03' is not in [hosts] (known: spark-01, spark-02)"),
    (("ssh_port = 2222", "ssh_port = 70000"), "hosts.spark-02.ssh_port: Input should be less than or equal to 65535"),
    (("address = \"10.0.0.2\"", "address = \"not an address!\""),
     "hosts.spark-02.address: 'not an address!' is neither"),
    (("transport = \"tcp\"", "transport = \"carrier-pigeon\""), "transport: Input should be 'nixl', 'tcp' or 'auto'"),
    (("UCX_TLS", "UCX-TLS"), "hosts.spark-01.env: 'UCX-TLS' is not an environment variable name"),
    (("model = \"/models/m\"\n", ""), "model: required field is missing"),
    (("[router]\n", "[router]\nport = 8200\nhost = \"spark-02\"\n"),
     "router: port 8200 on host 'spark-02' is also used by decode"),
    (("StrictHostKeyChecking=no", "-oFoo"), "ssh.options: '-oFoo' is not an ssh option of the form Key=Value"),
    (("[hosts.spark-02]", "[hosts.local]"), "hosts: 'local' cannot name a host"),
    (("ssh_port = 2222", "kv_bind = \"0.0.0.0/0\""), "hosts.spark-02.kv_bind: '0.0.0.0/0' is neither"),
    (("transport = \"tcp\"", "transport = \"tcp\"\ntoken_file = \"cluster-token\""),
     "token_file: 'cluster-token' must be absolute or start with ~"),
])
def test_bad_field_names_file_field_and_problem(tmp_path, edit, expected):
    old, new = edit
    assert old in BASE
    message = error_of(tmp_path, BASE.replace(old, new, 1))
    assert message.startswith(f"{tmp_path / 'cluster.toml'}: ")
    assert expected in message


@pytest.mark.parametrize("transport,expected", [
    ("nixl", "(nixl binds the address it advertises)"),
    ("auto", "(nixl binds the address it advertises; auto may pick nixl)"),
])
def test_a_kv_bind_other_than_the_kv_address_needs_tcp(tmp_path, transport, expected):
    text = BASE.replace('transport = "tcp"', f'transport = "{transport}"').replace(
        "ssh_port = 2222", 'ssh_port = 2222\nkv_bind = "0.0.0.0"')
    message = error_of(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'cluster.toml'}: hosts.spark-02.kv_bind: '0.0.0.0' differs from the "
                              "KV address '10.0.0.2', which needs transport = \"tcp\" ")
    assert message.endswith(expected)
    same = text.replace('kv_bind = "0.0.0.0"', 'kv_bind = "10.0.0.2"')  # binding what it advertises: fine
    assert "--kv-bind-host" in cluster_plan.plan(load_text(tmp_path, same))[1].args


def test_syntax_error_and_missing_file_name_the_file(tmp_path):
    assert "not valid TOML" in error_of(tmp_path, "name = ")
    with pytest.raises(ConfigError, match="cluster file /no/such.toml not found"):
        cluster_file.load(Path("/no/such.toml"))


def test_nodes_bind_http_address_and_serve_kv_on_kv_address(tmp_path):
    spec = load_text(tmp_path, BASE)
    prefill, decode, router, baseline = cluster_plan.plan(spec)
    args = prefill.args

    def value(args, flag):
        return args[args.index(flag) + 1]

    assert args[0] == "prefill" and value(args, "--host") == "10.0.0.1" and value(args, "--kv-host") == "10.9.0.1"
    assert value(args, "--kv-peer") == "10.0.0.2"  # spark-02 has no kv_address: its address carries KV
    assert "UCX_TLS=tcp" in args and "UCX_NET_DEVICES=kv0" in args
    assert "UCX_TLS=tcp" not in decode.args  # environment is per host
    assert prefill.health_url == "http://10.0.0.1:8101/health"
    assert ("10.9.0.1", 5601, "prefill.kv_port") in prefill.binds
    assert value(router.args, "--prefill") == "http://10.0.0.1:8101"
    assert value(router.args, "--decode") == "http://10.0.0.2:8201" == value(baseline.args, "--decode")
    assert value(baseline.args, "--mode") == "colocated" and router.host == "local"
    assert cluster_plan.endpoint(spec) == "http://127.0.0.1:8000"
    assert value(args, "--kv-lease-s") == "30.0" and value(decode.args, "--kv-transfer-timeout-s") == "30.0"


def test_kv_bind_is_the_tcp_block_servers_bind_address(tmp_path):
    spec = load_text(tmp_path, BASE.replace('kv_address = "10.9.0.1"', 'kv_address = "10.9.0.1"\nkv_bind = "0.0.0.0"'))
    prefill, decode = cluster_plan.plan(spec)[:2]
    args = prefill.args
    assert args[args.index("--kv-bind-host") + 1] == "0.0.0.0" and args[args.index("--kv-host") + 1] == "10.9.0.1"
    assert ("0.0.0.0", 5601, "prefill.kv_port") in prefill.binds  # what pre-flight checks is what it binds
    assert "--kv-bind-host" not in decode.args and ("10.0.0.2", 5602, "decode.kv_port") in decode.binds
    assert decode.args[decode.args.index("--kv-peer") + 1] == "10.9.0.1"  # the peer pulls from the kv address


def test_token_file_goes_to_every_node_and_router(tmp_path):
    spec = load_text(tmp_path, BASE.replace('transport = "tcp"', 'transport = "tcp"\n'
                                            'token_file = "~/.config/disagg/cluster-token"'))
    components = cluster_plan.plan(spec)
    assert [c.name for c in components] == ["prefill", "decode", "router", "baseline"]
    for component in components:
        args = component.args
        assert args[args.index("--cluster-token-file") + 1] == "~/.config/disagg/cluster-token", component.name
        assert args.count("--cluster-token-file") == 1
    assert not any("--cluster-token-file" in c.args for c in cluster_plan.plan(load_text(tmp_path, BASE)))


def test_engine_settings_reach_both_nodes(tmp_path):
    spec = load_text(tmp_path, BASE + '[engine]\nprefix_caching = false\nmax_model_len = 4096\n'
                                      'vllm_args = ["--seed", "1"]\n')
    for node in cluster_plan.plan(spec)[:2]:
        assert "--no-prefix-caching" in node.args and "4096" in node.args
        assert json.loads(node.args[node.args.index("--vllm-args") + 1]) == ["--seed", "1"]


def test_ssh_command_carries_user_port_key_and_options(tmp_path):
    spec = load_text(tmp_path, BASE)
    argv = ssh_argv(spec, "spark-02")
    assert argv[0] == "ssh" and argv[-1] == "me@10.0.0.2"
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-i") + 1] == "/keys/k"
    assert "BatchMode=yes" in argv and "StrictHostKeyChecking=no" in argv
    hosts = hosts_of(spec)
    assert hosts["local"].is_local and not hosts["spark-01"].is_local
    assert hosts["spark-01"].command(["disagg", "host", "check", "--model", "~/m x"])[-1] == \
        "disagg host check --model '~/m x'"


def test_a_router_on_every_interface_is_checked_on_its_hosts_address():
    spec = cluster_file.load(EXAMPLES / "spark-pair.toml")
    router = cluster_plan.plan(spec)[2]
    assert router.binds[0][:2] == ("0.0.0.0", 8000) and router.host == "spark-01"
    assert router.health_url == "http://192.168.1.101:8000/health"
    assert cluster_plan.endpoint(spec) == "http://192.168.1.101:8000"
