"""Several prefill and decode nodes (xPyD) and colocated replicas: `up --local --prefill-nodes N
--decode-nodes M` and cluster files plan distinct ports, KV ports and CPU cores per node, routers over every
node, and the routing policies the file or the flags name (router.policies, router.decider)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from deploy import cli as deploy_cli
from deploy import cluster_plan, local
from router import cli as router_cli
from tests.unit.test_cluster_file import BASE, error_of, load_text
from tests.unit.test_deploy_local import model_dir, options, plan, value  # noqa: F401 - model_dir is a fixture


def urls(args: tuple[str, ...], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def router_config(component: cluster_plan.Component):
    parser = argparse.ArgumentParser()
    router_cli.add_parsers(parser.add_subparsers())
    return router_cli.config_from_args(parser.parse_args(list(component.args)))


def test_up_local_plans_n_prefill_and_m_decode_nodes_each_with_its_ports_and_core(model_dir, monkeypatch):
    monkeypatch.setattr(local, "usable_cores", lambda: [0, 1, 2, 3, 4])
    opts = options(model_dir, prefill_nodes=2, decode_nodes=3, baseline_port=8001, kv_port_base=5600,
                   decode_policy="load_aware", prefill_policy="load_aware", disagg_policy="conditional")
    *nodes, router, baseline = plan(opts)
    assert [n.name for n in nodes] == ["prefill-1", "prefill-2", "decode-1", "decode-2", "decode-3"]
    ports = [(n.settings.port, n.settings.info_port, n.settings.kv_port, n.settings.cpu_cores) for n in nodes]
    assert ports == [(8100, 8101, 5600, "0"), (8102, 8103, 5601, "1"), (8200, 8201, 5602, "2"),
                     (8202, 8203, 5603, "3"), (8204, 8205, 5604, "4")]
    assert urls(router.args, "--prefill") == ["http://127.0.0.1:8101", "http://127.0.0.1:8103"]
    assert urls(router.args, "--decode") == urls(baseline.args, "--decode") == [
        "http://127.0.0.1:8201", "http://127.0.0.1:8203", "http://127.0.0.1:8205"]
    config, baseline_config = router_config(router), router_config(baseline)
    assert (config.prefill_policy, config.decode_policy, config.decider.policy) == \
        ("load_aware", "load_aware", "conditional")
    assert (baseline_config.mode, baseline_config.decode_policy) == ("colocated", "load_aware")


def test_colocated_replicas_get_a_core_each_and_one_node_may_get_several(model_dir, monkeypatch):
    monkeypatch.setattr(local, "usable_cores", lambda: [0, 1])
    first, second, router = plan(options(model_dir, mode="colocated", decode_nodes=2, decode_policy="load_aware"))
    assert [(n.name, n.settings.cpu_cores, n.settings.transport) for n in (first, second)] == \
        [("decode-1", "0", "none"), ("decode-2", "1", "none")]
    assert value(router.args, "--mode") == "colocated" and len(urls(router.args, "--decode")) == 2
    (wide, _) = plan(options(model_dir, mode="colocated", cores_per_node=2))
    assert wide.settings.cpu_cores == "0,1"
    one_each = plan(options(model_dir))  # one node per role, one core: the roles' own cores, as before
    assert [n.settings.cpu_cores for n in one_each[:2]] == [None, None]
    assert "--prefill-policy" not in one_each[2].args  # the router's own defaults


def test_more_nodes_than_cores_share_them_with_a_warning(model_dir, monkeypatch, caplog):
    monkeypatch.setattr(local, "usable_cores", lambda: [0, 1])
    nodes = plan(options(model_dir, prefill_nodes=2, decode_nodes=2))[:4]
    assert [n.settings.cpu_cores for n in nodes] == ["0", "1", "0", "1"]
    assert "nodes share cores" in caplog.text


def test_up_local_flags_reach_the_options():
    parser = argparse.ArgumentParser()
    deploy_cli.add_parsers(parser.add_subparsers())
    args = parser.parse_args(["up", "--local", "--prefill-nodes", "2", "--decode-nodes", "3", "--cores-per-node",
                              "1", "--decode-policy", "load_aware", "--disagg-policy", "conditional"])
    opts = deploy_cli.options_from_args(args)
    assert (opts.prefill_nodes, opts.decode_nodes, opts.decode_policy, opts.disagg_policy) == \
        (2, 3, "load_aware", "conditional")
    with pytest.raises(SystemExit):
        parser.parse_args(["up", "--local", "--decode-policy", "fastest"])


def test_a_cluster_files_router_names_its_policies(tmp_path: Path):
    text = BASE.replace("[router]\n", '[router]\nprefill_policy = "load_aware"\ndecode_policy = "load_aware"\n'
                                      'disagg_policy = "conditional"\n')
    *_, router, baseline = cluster_plan.plan(load_text(tmp_path, text))
    assert (value(router.args, "--prefill-policy"), value(router.args, "--disagg-policy")) == \
        ("load_aware", "conditional")
    assert value(baseline.args, "--decode-policy") == "load_aware" and "--disagg-policy" not in baseline.args
    bad = error_of(tmp_path, text.replace('decode_policy = "load_aware"', 'decode_policy = "fastest"'))
    assert "router.decode_policy: unknown routing policy 'fastest'" in bad
    assert "router.disagg_policy" in error_of(tmp_path, text.replace('"conditional"', '"sometimes"'))


@pytest.mark.parametrize("body, ready", [
    ({"status": "ok", "nodes": [{"role": "decode", "healthy": True}, {"role": "decode", "healthy": False}]}, False),
    ({"status": "ok", "nodes": [{"role": "decode", "healthy": True}, {"role": "prefill", "healthy": True}]}, True),
    ("OK", True),  # a node's /health: its 200 is enough
])
def test_a_router_is_ready_once_it_sees_every_node_healthy(body, ready):
    import httpx

    from deploy.cluster import _healthy

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=body) if isinstance(body, dict) else httpx.Response(200, text=body)

    with httpx.Client(transport=httpx.MockTransport(answer)) as client:
        assert _healthy(client, "http://router/health", every_node=True) is ready
        assert _healthy(client, "http://router/health") is True  # `status` asks the plain question
