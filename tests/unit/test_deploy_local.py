"""`disagg up --local`: a one-host cluster spec (the same as a cluster file with one local host), what it plans
to start, busy ports found before anything starts, and its processes: attached to the launcher, stopped as
a whole process group, watched until one exits."""

from __future__ import annotations

import json
import typing
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from deploy import cluster_file, cluster_plan, host_components, local
from deploy.cluster import Cluster, stop, watch
from node.settings import EngineSettings, NodeSettings


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"num_hidden_layers": 1, "num_attention_heads": 1,
                                                   "hidden_size": 8}))
    return model


def options(model_dir: Path, **values) -> local.LocalOptions:
    return local.LocalOptions.build(model=str(model_dir), run_dir=str(model_dir.parent / "logs"), **values)


def plan(opts: local.LocalOptions, token_file: Path | None = None) -> list[cluster_plan.Component]:
    return cluster_plan.plan(local.spec(opts, token_file))


def value(args, flag):
    return args[args.index(flag) + 1]


def test_disagg_plan_starts_nodes_then_routers(model_dir):
    prefill, decode, router, baseline = components = plan(options(model_dir, baseline_port=8001))
    assert [c.name for c in components] == ["prefill", "decode", "router", "baseline"]
    assert value(router.args, "--prefill") == "http://127.0.0.1:8101"
    assert value(router.args, "--decode") == "http://127.0.0.1:8201" == value(baseline.args, "--decode")
    assert value(baseline.args, "--mode") == "colocated" and "--prefill" not in baseline.args
    assert (prefill.settings.port, prefill.settings.info_port, prefill.settings.kv_port) == (8100, 8101, 5601)
    assert (decode.settings.port, decode.settings.info_port, decode.settings.kv_port) == (8200, 8201, 5602)
    assert prefill.settings.transport == "auto" and prefill.settings.model == str(model_dir)


def test_ports_and_engine_options_reach_the_nodes(model_dir):
    engine = EngineSettings(prefix_caching=False, kv_lease_s=20, kv_transfer_timeout_s=8, restart_on_crash=2)
    opts = options(model_dir, transport="tcp", port=9000, prefill_port=9100, decode_port=9200, kv_port_base=9500,
                   env={"UCX_TLS": "tcp"}, engine=engine)
    prefill, decode, router = plan(opts)
    for node in (prefill, decode):
        assert node.settings.engine == engine and node.settings.env == {"UCX_TLS": "tcp"}
        assert node.settings.transport == "tcp" and node.settings.host == "127.0.0.1"
    assert (decode.settings.port, decode.settings.info_port, decode.settings.kv_port) == (9200, 9201, 9501)
    assert value(router.args, "--port") == "9000" and value(router.args, "--prefill") == "http://127.0.0.1:9101"


def test_colocated_plan_has_no_prefill_and_no_connector(model_dir):
    decode, router = plan(options(model_dir, mode="colocated", baseline_port=8001))  # the router is the baseline
    assert [decode.name, router.name] == ["decode", "router"]
    assert decode.settings.transport == "none"
    assert value(router.args, "--mode") == "colocated" and "--prefill" not in router.args


def test_the_local_spec_is_a_cluster_file_with_one_local_host(tmp_path, model_dir):
    token = tmp_path / "logs" / "cluster-token"
    opts = options(model_dir, transport="tcp", baseline_port=8001, env={"UCX_TLS": "tcp"},
                   engine=EngineSettings(max_model_len=4096, restart_on_crash=1))
    (tmp_path / "cluster.toml").write_text(textwrap.dedent(f"""
        name = "local"
        model = "{model_dir}"
        transport = "tcp"
        run_dir = "{tmp_path / 'logs'}"
        token_file = "{token}"
        ready_timeout_s = 600
        [hosts.localhost]
        address = "127.0.0.1"
        local = true
        env = {{ UCX_TLS = "tcp" }}
        [prefill]
        host = "localhost"
        [decode]
        host = "localhost"
        [router]
        host = "localhost"
        baseline_port = 8001
        [engine]
        max_model_len = 4096
        restart_on_crash = 1
        """))
    from_file = cluster_file.load(tmp_path / "cluster.toml")
    assert local.spec(opts, token) == from_file
    assert plan(opts, token) == cluster_plan.plan(from_file)
    for node in plan(opts, token)[:2]:
        assert node.settings.cluster_token_file == str(token)
    assert all(value(c.args, "--cluster-token-file") == str(token) for c in plan(opts, token)[2:])


def test_the_settings_json_a_node_gets_round_trips(model_dir):
    for component in plan(options(model_dir, baseline_port=8001, engine=EngineSettings(vllm_args=("--seed", "1")))):
        if component.is_node:
            role, flag, text = component.args
            assert (role, flag) == (component.role, "--settings")
            assert NodeSettings.from_json(text) == component.settings


def _non_default(name: str, info) -> object:
    """A valid value other than the field's default, by the field's type."""
    default = info.default
    choices = typing.get_args(info.annotation) if typing.get_origin(info.annotation) is typing.Literal else ()
    if isinstance(default, bool):
        return not default
    if choices:
        return next(choice for choice in choices if choice not in (default, "auto"))
    if isinstance(default, (int, float)):
        return default + 1
    if default is None and name.endswith("_per_s"):
        return 1.5
    if isinstance(default, tuple):
        return ("--seed", "1")
    return "bfloat16"  # dtype


def _flag(name: str, value: object) -> list[str]:
    if isinstance(value, bool):  # the flag that sets the field's non-default value
        return [f"--{'' if value else 'no-'}{name.replace('_', '-')}"]
    return [f"--{name.replace('_', '-')}", json.dumps(list(value)) if isinstance(value, tuple) else str(value)]


def test_every_engine_setting_is_an_up_local_flag_a_cluster_file_key_and_reaches_the_nodes(tmp_path, model_dir):
    """A new EngineSettings field needs nothing else: both launchers take it and hand it to the nodes."""
    from deploy.cli import options_from_args
    from disagg.cli import build_parser

    wanted = {name: _non_default(name, info) for name, info in EngineSettings.model_fields.items()}
    argv = ["up", "--local", "--model", str(model_dir)] + [a for n, v in wanted.items() for a in _flag(n, v)]
    from_flags = options_from_args(build_parser().parse_args(argv)).engine
    assert from_flags == EngineSettings(**wanted) != EngineSettings()
    engine_toml = "\n".join(f"{n} = {json.dumps(list(v) if isinstance(v, tuple) else v)}" for n, v in wanted.items())
    (tmp_path / "c.toml").write_text(f'name = "c"\nmodel = "/m"\n[hosts.h]\naddress = "127.0.0.1"\n'
                                     f'[prefill]\nhost = "h"\n[decode]\nhost = "h"\n[engine]\n{engine_toml}\n')
    for node in cluster_plan.plan(cluster_file.load(tmp_path / "c.toml"))[:2]:
        assert NodeSettings.from_json(node.args[2]).engine == from_flags


def test_up_refuses_busy_ports_with_a_clear_message(model_dir):
    log_dir = model_dir.parent / "logs"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "disagg", "up", "--local", "--model", str(model_dir),
                                 "--port", str(port), "--log-dir", str(log_dir)],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"port {port} on 127.0.0.1 (router.port) is already in use" in result.stderr
    # a port the kernel handed out is in its ephemeral range: the agent reports the range, up warns
    assert f"port {port} on 127.0.0.1 (router.port) lies in the kernel's ephemeral port range" in result.stderr
    assert "nothing was started" in result.stderr
    assert not log_dir.exists(), "nothing may start"


def test_cli_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "disagg", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for command in ("convert", "prefill", "decode", "router", "up", "bench", "kv-size"):
        assert command in out.stdout


# --- the processes: started by the agent in this process -----------------------------------------------

def _shell(monkeypatch, script: str) -> None:
    """Components run `sh -c SCRIPT NAME` instead of `disagg ...` (their argument is their name)."""
    monkeypatch.setattr(host_components, "DISAGG", ("sh", "-c", script))


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphaned zombie may wait for a reaper that never comes here)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _wait_for(condition, timeout_s: float = 10.0) -> bool:
    deadline_s = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline_s:
        time.sleep(0.05)
    return condition()


def test_stop_kills_the_whole_process_group(tmp_path, monkeypatch):
    pid_file = tmp_path / "child.pid"
    _shell(monkeypatch, f"sleep 300 & echo $! > {pid_file}; wait")
    answer = host_components.start(str(tmp_path), "t", [], attached=True)
    assert answer["started"] and _wait_for(pid_file.exists)
    child = int(pid_file.read_text())
    assert _running(child)
    stopped = host_components.stop(str(tmp_path), "t", grace_s=5)
    assert stopped["stopped"] and stopped["left"] == []
    assert not _running(answer["pid"]) and _wait_for(lambda: not _running(child), 5), "the whole group must go"


def test_watch_returns_as_soon_as_one_component_dies(tmp_path, model_dir, monkeypatch):
    _shell(monkeypatch, 'if [ "$0" = decode ]; then sleep 2; exit 3; fi; exec sleep 300')
    cluster = Cluster.of(local.spec(options(model_dir, mode="colocated")), attached=True)
    run_dir = cluster.spec.cluster_run_dir
    for component in cluster.components:
        assert host_components.start(run_dir, component.name, [component.name], attached=True)["started"]
    try:
        assert watch(cluster).name == "decode"
        assert host_components.running_pid(run_dir, "router") is not None
    finally:
        assert stop(cluster, cluster.components) == []
    assert host_components.status(run_dir, ["decode", "router"]) == {"components": {
        n: {"pid": None, "log": str(Path(run_dir) / f"{n}.log")} for n in ("decode", "router")}}


def test_attached_components_die_with_the_launcher(tmp_path):
    """SIGKILL the process that started a component attached: the component gets SIGTERM."""
    code = textwrap.dedent(f"""
        from deploy import host_components
        host_components.DISAGG = ("sleep",)
        print(host_components.start({str(tmp_path)!r}, "c", ["300"], attached=True)["pid"], flush=True)
        import time; time.sleep(300)
        """)
    launcher = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    component = int(launcher.stdout.readline())
    assert _running(component)
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    assert _wait_for(lambda: not _running(component)), "an attached component outlived its launcher"


def test_local_options_with_a_cluster_file_are_refused(tmp_path):
    from core.errors import ConfigError
    from disagg.cli import build_parser

    args = build_parser().parse_args(["up", str(tmp_path / "c.toml"), "--port", "9000", "--no-prefix-caching"])
    with pytest.raises(ConfigError, match=r"options of --local given \(port, prefix_caching\)"):
        args.func(args)
