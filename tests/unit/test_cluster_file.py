"""Cluster files: validation names the file, the field and the problem; the plan gives each node its
HTTP and KV addresses (and KV bind address) and its host's environment, and every node and router the
cluster token file; ssh command lines carry the file's settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy import cluster_file, cluster_plan
from deploy.remote import hosts_of, ssh_argv
from core.errors import ConfigError
from node.settings import NodeSettings

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


def settings_of(component: cluster_plan.Component) -> NodeSettings:
    """What a node component's process gets: `disagg ROLE --settings JSON`."""
    role, flag, text = component.args
    assert (role, flag) == (component.name.split("-")[0], "--settings")
    return NodeSettings.from_json(text)


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
    assert spec.prefill[0].host != spec.decode[0].host
    assert len(cluster_plan.plan(spec)) >= 3


@pytest.mark.parametrize("name", ["spark-pair.toml", "two-linux-tcp.toml"])
def test_examples_protect_the_nodes_with_a_token_file(name):
    spec = cluster_file.load(EXAMPLES / name)
    assert spec.token_file == "~/.config/disagg/cluster-token"
    for component in cluster_plan.plan(spec):
        if component.is_node:
            assert settings_of(component).cluster_token_file == spec.token_file
        else:
            assert "--cluster-token-file" in component.args


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
    (("transport = \"tcp\"", "transport = \"carrier-pigeon\""),
     "transport: unknown transport 'carrier-pigeon'; known: "),
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
    assert settings_of(cluster_plan.plan(load_text(tmp_path, same))[1]).kv_bind_host == "10.0.0.2"


def test_syntax_error_and_missing_file_name_the_file(tmp_path):
    assert "not valid TOML" in error_of(tmp_path, "name = ")
    with pytest.raises(ConfigError, match="cluster file /no/such.toml not found"):
        cluster_file.load(Path("/no/such.toml"))


def test_nodes_bind_http_address_and_serve_kv_on_kv_address(tmp_path):
    spec = load_text(tmp_path, BASE)
    prefill, decode, router, baseline = cluster_plan.plan(spec)
    args, node = prefill.args, settings_of(prefill)

    def value(args, flag):
        return args[args.index(flag) + 1]

    assert args[0] == "prefill" and node.host == "10.0.0.1" and node.kv_host == "10.9.0.1"
    assert node.kv_peer == "10.0.0.2"  # spark-02 has no kv_address: its address carries KV
    assert node.env == {"UCX_TLS": "tcp", "UCX_NET_DEVICES": "kv0"}
    assert settings_of(decode).env == {}  # environment is per host
    assert prefill.health_url == "http://10.0.0.1:8101/health"
    assert ("10.9.0.1", 5601, "prefill.kv_port") in prefill.binds
    assert value(router.args, "--prefill") == "http://10.0.0.1:8101"
    assert value(router.args, "--decode") == "http://10.0.0.2:8201" == value(baseline.args, "--decode")
    assert value(baseline.args, "--mode") == "colocated" and router.host == "local"
    assert cluster_plan.endpoint(spec) == "http://127.0.0.1:8000"
    assert node.engine.kv_lease_s == 30.0 and settings_of(decode).engine.kv_transfer_timeout_s == 30.0


def test_kv_bind_is_the_tcp_block_servers_bind_address(tmp_path):
    spec = load_text(tmp_path, BASE.replace('kv_address = "10.9.0.1"', 'kv_address = "10.9.0.1"\nkv_bind = "0.0.0.0"'))
    prefill, decode = cluster_plan.plan(spec)[:2]
    node = settings_of(prefill)
    assert node.kv_bind_host == "0.0.0.0" and node.kv_host == "10.9.0.1"
    assert ("0.0.0.0", 5601, "prefill.kv_port") in prefill.binds  # what pre-flight checks is what it binds
    assert settings_of(decode).kv_bind_host is None and ("10.0.0.2", 5602, "decode.kv_port") in decode.binds
    assert settings_of(decode).kv_peer == "10.9.0.1"  # the peer pulls from the kv address


def test_token_file_goes_to_every_node_and_router(tmp_path):
    spec = load_text(tmp_path, BASE.replace('transport = "tcp"', 'transport = "tcp"\n'
                                            'token_file = "~/.config/disagg/cluster-token"'))
    components = cluster_plan.plan(spec)
    assert [c.name for c in components] == ["prefill", "decode", "router", "baseline"]
    for component in components:
        args = component.args
        if component.is_node:
            assert settings_of(component).cluster_token_file == "~/.config/disagg/cluster-token", component.name
            continue
        assert args[args.index("--cluster-token-file") + 1] == "~/.config/disagg/cluster-token", component.name
        assert args.count("--cluster-token-file") == 1
    open_cluster = cluster_plan.plan(load_text(tmp_path, BASE))
    assert not any("--cluster-token-file" in c.args for c in open_cluster)
    assert not any(settings_of(c).cluster_token_file for c in open_cluster if c.is_node)


def test_engine_settings_reach_both_nodes(tmp_path):
    spec = load_text(tmp_path, BASE + '[engine]\nprefix_caching = false\nmax_model_len = 4096\n'
                                      'vllm_args = ["--seed", "1"]\n')
    for node in cluster_plan.plan(spec)[:2]:
        engine = settings_of(node).engine
        assert engine.prefix_caching is False and engine.max_model_len == 4096
        assert engine.vllm_args == ("--seed", "1")


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


def test_several_nodes_per_role_are_arrays_of_tables_named_by_number(tmp_path):
    text = BASE.replace('[prefill]\nhost = "spark-01"', '[[prefill]]\nhost = "spark-01"\n'
                        '[[prefill]]\nhost = "spark-01"\nport = 8110\ninfo_port = 8111\nkv_port = 5611\n'
                        'cpu_cores = "2"')
    spec = load_text(tmp_path, text)
    components = cluster_plan.plan(spec)
    assert [c.name for c in components] == ["prefill-1", "prefill-2", "decode", "router", "baseline"]
    assert [c.role for c in components] == ["prefill", "prefill", "decode", "router", "baseline"]
    second = settings_of(components[1])
    assert (second.port, second.info_port, second.kv_port, second.cpu_cores) == (8110, 8111, 5611, "2")
    router = components[3].args
    assert [router[i + 1] for i, a in enumerate(router) if a == "--prefill"] == ["http://10.0.0.1:8101",
                                                                                 "http://10.0.0.1:8111"]
    assert ("10.0.0.1", 8111, "prefill-2.info_port") in components[1].binds
    clash = error_of(tmp_path, text.replace("port = 8110\n", ""))
    assert "prefill-2: port 8100 on host 'spark-01' is also used by prefill-1" in clash
    typo = error_of(tmp_path, text.replace("port = 8110", "prot = 8110"))
    assert "prefill-2.prot: unknown field (a typo?)" in typo


def test_without_prefill_nodes_the_cluster_is_colocated(tmp_path):
    text = BASE.replace('[prefill]\nhost = "spark-01"\n', "").replace("baseline_port = 8001\n", "")
    decode, router = cluster_plan.plan(load_text(tmp_path, text))
    assert settings_of(decode).transport == "none"
    assert router.args[router.args.index("--mode") + 1] == "colocated" and "--prefill" not in router.args
    with_baseline = text.replace("[router]\n", "[router]\nbaseline_port = 8001\n")
    assert "router.baseline_port: a colocated cluster" in error_of(tmp_path, with_baseline)
    no_transport = BASE.replace('transport = "tcp"', 'transport = "none"')
    assert "transport: 'none' moves no KV" in error_of(tmp_path, no_transport)


def test_engine_is_the_nodes_engine_settings(tmp_path):
    spec = load_text(tmp_path, BASE + "[engine]\nrestart_on_crash = 2\nkv_transfer_timeout_s = 8\n")
    for node in cluster_plan.plan(spec)[:2]:
        assert settings_of(node).engine == spec.engine
        assert (spec.engine.restart_on_crash, spec.engine.kv_transfer_timeout_s) == (2, 8.0)
    assert "engine.restart_on_crash: Input should be greater than or equal to 0" in error_of(
        tmp_path, BASE + "[engine]\nrestart_on_crash = -1\n")
