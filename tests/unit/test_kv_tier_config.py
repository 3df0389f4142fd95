"""Where the KV tier is configured: the prefill node's MultiConnector config for both P/D transports (checked
by vLLM's own config classes and connector factory), the decode node without it, the node settings and their
checks, a cluster file's `[kv_tier]` (the Redis server `disagg up` runs, the settings every prefill node
gets) and `up --local --kv-tier`; the tier's metrics through vLLM's stats and Prometheus hooks."""

from __future__ import annotations

import functools
import importlib.util
from types import SimpleNamespace

import pytest

from core.errors import ConfigError
from core.host import PLATFORMS
from decode_node.role import ROLE as DECODE
from deploy import cluster_file, cluster_plan, local
from node.launch import VLLM_SERVER_MODULE, resolve
from node.settings import EngineSettings, NodeSettings
from prefill_node.role import ROLE as PREFILL
from tests.support.cluster_launches import SMOLLM2
from transport.kv_tier.compose import with_tier
from transport.kv_tier.settings import KvTierSettings

pytestmark = pytest.mark.timeout(120)
REDIS = dict(kv_tier="redis", kv_tier_url="redis://10.0.0.9:6390/0")
P_D_CONNECTORS = {"tcp": "transport.tcp.connector.DisaggTcpConnector",
                  "nixl": "transport.nixl.connector.NixlConnector"}


@pytest.fixture(scope="module")
def vllm_cli():
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed")
    import tests.support.vllm_cli as module

    module.server_parser()
    return module


def _launch(role, transport: str, **engine):
    settings = NodeSettings.build(role=role.name, model=str(SMOLLM2), transport=transport, port=8100,
                                  info_port=8101, kv_port=5601, engine=EngineSettings(**engine))
    return resolve(settings, role, PLATFORMS["cpu"], environ={})


def test_the_tier_goes_second_in_a_multi_connector_with_recompute():
    pd = {"kv_connector": "DisaggTcpConnector", "kv_connector_module_path": "transport.tcp.connector",
          "kv_role": "kv_producer", "kv_connector_extra_config": {"port": 5601}}
    config = with_tier(pd, KvTierSettings(backend="disk", path="/srv/kv", ttl_s=60))
    assert config["kv_connector"] == "MultiConnector" and config["kv_role"] == "kv_producer"
    assert config["kv_load_failure_policy"] == "recompute"
    first, tier = config["kv_connector_extra_config"]["connectors"]
    assert first == pd and tier["kv_connector"] == "KvTierConnector" and tier["kv_role"] == "kv_both"
    assert tier["kv_connector_extra_config"] == {"backend": "disk", "path": "/srv/kv", "ttl_s": 60.0}
    assert KvTierSettings.from_extra_config(tier["kv_connector_extra_config"]).path == "/srv/kv"
    with pytest.raises(ValueError, match="kv_role"):
        with_tier({"kv_connector": "NixlConnector"}, KvTierSettings(backend="disk", path="/x"))


@pytest.mark.parametrize("transport", ["tcp", "nixl"])
def test_prefill_node_command_has_both_connectors_as_vllm_parses_them(vllm_cli, transport):
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory

    node = _launch(PREFILL, transport, **REDIS)
    args = vllm_cli.parse_server_command(node.vllm_command(), VLLM_SERVER_MODULE)
    config = args.kv_transfer_config
    assert isinstance(config, vllm_cli.KVTransferConfig) and config.kv_connector == "MultiConnector"
    assert config.kv_role == "kv_producer" and config.kv_load_failure_policy == "recompute"
    assert config.has_connector("NixlConnector") is (transport == "nixl")  # vLLM's own NIXL checks still see it
    assert args.enable_prefix_caching is None, "prefix caching stays on"
    children = config.kv_connector_extra_config["connectors"]
    found = []
    for child in children:
        child_config = vllm_cli.KVTransferConfig(**child, engine_id=config.engine_id)
        cls = KVConnectorFactory.get_connector_class(child_config)
        found.append(f"{cls.__module__}.{cls.__name__}")
    assert found == [P_D_CONNECTORS[transport], "transport.kv_tier.connector.KvTierConnector"]
    assert children[0]["kv_role"] == "kv_producer" and children[1]["kv_role"] == "kv_both"
    tier = KvTierSettings.from_extra_config(children[1]["kv_connector_extra_config"])
    assert tier.url == REDIS["kv_tier_url"] and tier.auth_with_cluster_token is False
    if transport == "nixl":
        assert config.kv_buffer_device == "cpu"


@pytest.mark.parametrize("transport", ["tcp", "nixl"])
def test_decode_nodes_never_get_the_tier(transport):
    config = _launch(DECODE, transport, **REDIS).kv_transfer_config()
    assert config["kv_connector"] != "MultiConnector" and config["kv_role"] == "kv_consumer"


def test_node_settings_checks():
    with pytest.raises(ConfigError, match="prefix caching"):
        _launch(PREFILL, "tcp", kv_tier="disk", prefix_caching=False)
    assert _launch(DECODE, "tcp", kv_tier="disk", prefix_caching=False).kv_tier is None, "decode nodes ignore it"
    with pytest.raises(ConfigError, match="url"):
        _launch(PREFILL, "tcp", kv_tier="redis")
    disk = _launch(PREFILL, "tcp", kv_tier="disk").kv_tier
    assert disk.path.endswith("/.cache/disagg/kv-tier") and not disk.path.startswith("~")
    with pytest.raises(ConfigError):
        _launch(PREFILL, "tcp", kv_tier="disk", kv_tier_auth="cluster-token")
    assert _launch(PREFILL, "tcp").kv_tier is None and _launch(PREFILL, "tcp").kv_transfer_config()["kv_connector"] == \
        "DisaggTcpConnector"


def test_tier_settings_reject_mismatched_fields():
    for bad in (dict(backend="redis"), dict(backend="redis", url="http://x"), dict(backend="disk"),
                dict(backend="disk", path="/x", url="redis://x"), dict(backend="redis", url="redis://x", path="/y")):
        with pytest.raises(ValueError):
            KvTierSettings(**bad)
    with pytest.raises(ValueError, match="KV tier settings"):
        KvTierSettings.from_extra_config({"backend": "disk", "path": "/x", "ttl": 3})


CLUSTER = """
name = "tier"
model = "{model}"
transport = "tcp"
token_file = "{token}"
[hosts.a]
address = "10.0.0.1"
[hosts.b]
address = "10.0.0.2"
[[prefill]]
host = "a"
[[prefill]]
host = "b"
[decode]
host = "b"
port = 8300
info_port = 8301
kv_port = 5603
[engine]
{engine}
[kv_tier]
{tier}
"""


def _spec(tmp_path, tier: str, engine: str = ""):
    path = tmp_path / "c.toml"
    path.write_text(CLUSTER.format(model=SMOLLM2, token=tmp_path / "token", tier=tier, engine=engine))
    return cluster_file.load(path)


def test_a_cluster_file_tier_starts_redis_first_and_reaches_every_prefill_node(tmp_path):
    spec = _spec(tmp_path, 'backend = "redis"\nmax_bytes = 268435456\nttl_s = 600')
    components = cluster_plan.plan(spec)
    tier = components[0]
    assert (tier.name, tier.host, tier.health_port) == ("kv-tier", "a", 6391)
    assert ("10.0.0.1", 6390, "kv_tier.port") in tier.binds and not tier.is_node
    assert '"max_bytes":268435456' in tier.args[2] and "cluster_token_file" in tier.args[2]
    for component in components:
        if component.role == "prefill":
            engine = component.settings.engine
            assert (engine.kv_tier, engine.kv_tier_url) == ("redis", "redis://10.0.0.1:6390/0")
            assert engine.kv_tier_ttl_s == 600
            assert engine.kv_tier_auth == "cluster-token"
        elif component.role == "decode":
            assert component.settings.engine.kv_tier == "none"


def test_cluster_file_tier_variants_and_errors(tmp_path):
    own = cluster_plan.plan(_spec(tmp_path, 'backend = "redis"\nurl = "redis://10.0.0.9:6379/2"'))
    assert "kv-tier" not in [c.name for c in own]
    assert {c.settings.engine.kv_tier_auth for c in own if c.role == "prefill"} == {"none"}
    disk = cluster_plan.plan(_spec(tmp_path, 'backend = "disk"\npath = "/shared/kv"'))
    assert [c.settings.engine.kv_tier_path for c in disk if c.role == "prefill"] == ["/shared/kv"] * 2
    for tier, engine, message in (('backend = "disk"\nurl = "redis://x"', "", "disk tier"),
                                  ('backend = "redis"', 'kv_tier = "redis"', "given twice"),
                                  ('backend = "redis"\nport = 8100', "", "port 8100"),
                                  ('backend = "redis"\nhost = "c"', "", "not in \\[hosts\\]")):
        with pytest.raises(ConfigError, match=message):
            _spec(tmp_path, tier, engine)


def test_the_engine_s_kv_tier_settings_are_the_other_spelling_of_kv_tier(tmp_path):
    path = tmp_path / "c.toml"
    text = CLUSTER.format(model=SMOLLM2, token=tmp_path / "token", tier="", engine='kv_tier = "redis"')
    path.write_text(text.replace("[kv_tier]\n", ""))
    components = cluster_plan.plan(cluster_file.load(path))
    assert components[0].name == "kv-tier"
    urls = {c.settings.engine.kv_tier_url for c in components if c.role == "prefill"}
    assert urls == {"redis://10.0.0.1:6390/0"}


def test_up_local_kv_tier_flags(tmp_path):
    from deploy.cli import options_from_args
    from disagg.cli import build_parser

    args = build_parser().parse_args(["up", "--local", "--kv-tier", "redis", "--kv-tier-max-bytes", "67108864",
                                      "--kv-tier-port", "16390", "--model", str(SMOLLM2)])
    spec = local.spec(options_from_args(args), token_file=tmp_path / "token")
    assert spec.engine.kv_tier == "none" and spec.kv_tier.max_bytes == 67108864
    names = [c.name for c in cluster_plan.plan(spec)]
    assert names[0] == "kv-tier"
    [prefill] = [c for c in cluster_plan.plan(spec) if c.role == "prefill"]
    assert prefill.settings.engine.kv_tier_url == "redis://127.0.0.1:16390/0"
    disk = local.spec(local.LocalOptions.build(model=str(SMOLLM2), engine=EngineSettings(kv_tier="disk")))
    assert "kv-tier" not in [c.name for c in cluster_plan.plan(disk)] and disk.kv_tier.backend == "disk"
    with pytest.raises(ConfigError, match="colocated"):
        local.spec(local.LocalOptions.build(model=str(SMOLLM2), mode="colocated",
                                            engine=EngineSettings(kv_tier="disk")))


def test_stats_cross_the_multi_connector_by_registered_name(vllm_cli):
    import transport.kv_tier.connector  # noqa: F401  (registers KvTierConnector)
    import transport.tcp.connector  # noqa: F401  (registers DisaggTcpConnector)
    from vllm.distributed.kv_transfer.kv_connector.v1.multi_connector import MultiConnector

    data = {"KvTierConnector": {"hit_blocks": [3], "lookups": [1]}, "DisaggTcpConnector": {},
            "NixlConnector": {}}
    stats = MultiConnector.build_kv_connector_stats(data)
    assert set(stats.data) == set(data)
    assert stats.reduce()["KvTierConnector"] == {"tier lookups": 1, "tier hit blocks": 3}


def test_prometheus_metrics_observe_the_tier_counters(vllm_cli):
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    from transport.kv_tier.stats import KvTierPromMetrics

    registry = CollectorRegistry()
    types = {cls: functools.partial(cls, registry=registry) for cls in (Counter, Gauge, Histogram)}
    metrics = KvTierPromMetrics(SimpleNamespace(kv_transfer_config=None), types, ["engine"], {0: ["0"]})
    metrics.observe({"hit_blocks": [2, 3], "miss_blocks": [1], "lookup_errors": [1], "store_errors": [2],
                     "loaded_bytes": [100], "load_seconds": [0.01], "evicted_total": [4, 7]})
    value = registry.get_sample_value
    assert value("vllm:disagg_kv_tier_hit_blocks_total", {"engine": "0"}) == 5
    assert value("vllm:disagg_kv_tier_miss_blocks_total", {"engine": "0"}) == 1
    assert value("vllm:disagg_kv_tier_errors_total", {"engine": "0", "op": "lookup"}) == 1
    assert value("vllm:disagg_kv_tier_errors_total", {"engine": "0", "op": "store"}) == 2
    assert value("vllm:disagg_kv_tier_loaded_bytes_total", {"engine": "0"}) == 100
    assert value("vllm:disagg_kv_tier_evicted_entries", {"engine": "0"}) == 7
    assert value("vllm:disagg_kv_tier_load_seconds_count", {"engine": "0"}) == 1
