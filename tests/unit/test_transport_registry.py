"""Adding a transport is one module and one registry line: a transport defined and registered only here shows
up in `--transport auto`, `disagg prefill --transport`, the cluster file, `disagg doctor`, `disagg bench
transport`, `bench compare --transports` and the bench's KV metrics, with no other module edited."""

from __future__ import annotations

import json
import time
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path
from typing import Any

import pytest

from core.errors import ConfigError
from transport import registry
from transport.base import BenchMethod, Fit, KvLink, LinkFacts, TransferMetricNames, Transport

pytestmark = pytest.mark.timeout(120)

DUMMY = "dummy"
DUMMY_METHOD = "dummy-shm"
EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "two-linux-tcp.toml"


class DummyTransport(Transport):
    """A transport that exists only in this test: KV through POSIX shared memory (bench peers below)."""

    name = DUMMY
    summary = "a test's transport: KV bytes through shared memory"
    metric_names = TransferMetricNames("vllm:dummy_kv_seconds_sum", "vllm:dummy_kv_seconds_count",
                                       "vllm:dummy_kv_bytes_total")
    bench_methods = (BenchMethod(DUMMY_METHOD, "a copy out of POSIX shared memory, 2 processes",
                                 f"{__name__}:DummySource", f"{__name__}:DummySink"),)

    def fit_for_auto(self, facts: LinkFacts) -> Fit:
        return Fit(facts.peer_is_local, "the dummy fits a peer on this host" if facts.peer_is_local
                   else "the dummy needs the peer on this host")

    def kv_transfer_config(self, link: KvLink) -> dict[str, Any] | None:
        return {"kv_connector": "DummyConnector", "kv_connector_module_path": __name__}

    def doctor(self) -> dict[str, Any]:
        return {"status": "ok", "reason": "defined in a test", "segments": ["/dev/shm"]}

    def loopback(self, size_bytes: int, repeats: int) -> dict[str, Any] | None:
        return {"status": "ok", "gb_per_s": 1.5}


class DummySource:
    """Bench peer (own process): the pattern buffer in a shared memory segment."""

    def __init__(self) -> None:
        self._segment: shared_memory.SharedMemory | None = None

    def prepare(self, size_bytes: int, transfers: int) -> dict[str, Any]:
        from bench.xfer.buffers import pattern_buffer

        self._segment = shared_memory.SharedMemory(create=True, size=size_bytes)
        self._segment.buf[:size_bytes] = pattern_buffer(size_bytes).data
        return {"segment": self._segment.name}

    def release(self) -> dict[str, Any]:
        if self._segment is not None:
            self._segment.close()
            self._segment.unlink()
        self._segment = None
        return {}

    def close(self) -> None:
        self.release()


class DummySink:
    """Bench peer (own process): copies the segment into its own buffer, `repeats` + 1 times."""

    def pull(self, endpoint: dict[str, Any], size_bytes: int, repeats: int) -> dict[str, Any]:
        from bench.xfer.buffers import empty_buffer, holds_pattern

        buffer = empty_buffer(size_bytes)
        segment = shared_memory.SharedMemory(name=endpoint["segment"])
        resource_tracker.unregister(segment._name, "shared_memory")  # noqa: SLF001 - the source unlinks it
        target, seconds = memoryview(buffer), []
        try:
            for _ in range(repeats + 1):
                started_s = time.perf_counter()
                target[:] = segment.buf[:size_bytes]
                seconds.append(time.perf_counter() - started_s)
        finally:
            segment.close()
        return {"seconds": seconds[1:], "verified": holds_pattern(buffer)}


def _register_in_order(transports: list[Transport]) -> None:
    for transport in registry.all_transports():
        registry.unregister(transport.name)
    for transport in transports:
        registry.register(transport)


@pytest.fixture
def dummy_last():
    """The dummy registered as a plugin would be: after the built-ins."""
    builtins = list(registry.all_transports())
    registry.register(DummyTransport())
    yield
    _register_in_order(builtins)


@pytest.fixture
def dummy_first():
    """The dummy registered ahead of the built-ins: `auto` asks it first."""
    builtins = list(registry.all_transports())
    _register_in_order([DummyTransport(), *builtins])
    yield
    _register_in_order(builtins)


@pytest.fixture
def fast_vllm(monkeypatch):
    from transport import doctor

    monkeypatch.setattr(doctor, "probe_vllm", lambda: {"status": "ok", "version": "0.32.0", "platform": "cpu"})


def local(peer_is_local: bool = True) -> LinkFacts:
    return LinkFacts(peer_host="127.0.0.1" if peer_is_local else "192.0.2.1", peer_is_local=peer_is_local)


def test_auto_picks_the_dummy_when_it_is_first_and_fits(dummy_first):
    choice = registry.choose("auto", local())
    assert (choice.name, choice.reason) == (DUMMY, "auto: the dummy fits a peer on this host")
    assert registry.candidates(local())[0] == (DUMMY, True, "the dummy fits a peer on this host")
    remote = registry.choose("auto", local(False))
    assert remote.name != DUMMY
    assert (DUMMY, False, "the dummy needs the peer on this host") in registry.candidates(local(False))


def test_auto_asks_the_dummy_in_its_turn_when_registered_last(dummy_last):
    assert registry.names()[-1] == DUMMY and DUMMY in registry.choices()
    assert [name for name, _, _ in registry.candidates(local())] == list(registry.names())
    assert registry.choose(DUMMY, local(False)).name == DUMMY  # asked for by name: taken as given


def test_prefill_node_and_cluster_file_accept_the_dummy_only_while_registered(dummy_last, tmp_path):
    from deploy import cluster_file
    from disagg.cli import build_parser

    assert build_parser().parse_args(["prefill", "--transport", DUMMY]).transport == DUMMY
    path = tmp_path / "cluster.toml"
    path.write_text(EXAMPLE.read_text().replace('transport = "tcp"', f'transport = "{DUMMY}"', 1))
    assert cluster_file.load(path).transport == DUMMY
    registry.unregister(DUMMY)
    with pytest.raises(ConfigError, match="transport: unknown transport .*; known: nixl, tcp, auto"):
        cluster_file.load(path)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prefill", "--transport", DUMMY])


def test_doctor_has_a_section_a_verdict_and_a_bandwidth_for_the_dummy(dummy_last, fast_vllm, capsys):
    from disagg.cli import main

    assert main(["doctor", "--json", "--bench-size-mb", "1", "--bench-repeats", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report[DUMMY] == {"status": "ok", "reason": "defined in a test", "segments": ["/dev/shm"]}
    assert list(report).index(DUMMY) < list(report).index("rdma")
    assert {"transport": DUMMY, "fits": True, "reason": "the dummy fits a peer on this host"} \
        in report["auto"]["candidates"]
    assert report["bandwidth"]["transports"][DUMMY] == {"status": "ok", "gb_per_s": 1.5}
    assert report["bandwidth"]["transports"]["tcp"]["status"] == "ok"


def test_bench_transport_lists_and_runs_the_dummy_method(dummy_last, capsys):
    from bench.xfer.bench import method_names
    from disagg.cli import main

    assert method_names()[-3:] == (DUMMY_METHOD, "socket", "memcpy")
    with pytest.raises(SystemExit):
        main(["bench", "transport", "--help"])
    help_text = "".join(capsys.readouterr().out.split())  # argparse wraps and breaks the long list
    assert (f"subsetoftcp-connector,nixl-ucx,nixl-ucx-tcp,tcp-connector-int8,tcp-connector-bf16,tcp-connector-fp16,"
            f"{DUMMY_METHOD},socket,memcpy") in help_text
    assert main(["bench", "transport", "--sizes-mb", "1", "--repeats", "2", "--methods", f"{DUMMY_METHOD},memcpy",
                 "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["methods"][DUMMY_METHOD] == "a copy out of POSIX shared memory, 2 processes"
    (row,) = [row for row in results["results"] if row["method"] == DUMMY_METHOD]
    assert row["status"] == "ok", row["reason"]
    assert row["gb_per_s"] > 0 and len(row["samples_s"]) == 2 and row["ratio_to_memcpy"] > 0


def test_bench_compare_and_kv_metrics_know_the_dummy(dummy_last):
    from bench import compare_cli, kv_metrics

    assert compare_cli._transports_arg(f"tcp,{DUMMY}") == ("tcp", DUMMY)  # noqa: SLF001
    assert kv_metrics.transfer_metrics()[DUMMY] == DummyTransport.metric_names
    before = {"vllm:dummy_kv_seconds_count": 1.0, "vllm:dummy_kv_seconds_sum": 0.5, "vllm:dummy_kv_bytes_total": 10}
    after = {"vllm:dummy_kv_seconds_count": 3.0, "vllm:dummy_kv_seconds_sum": 0.9, "vllm:dummy_kv_bytes_total": 50}
    found = kv_metrics.delta(before, after, DUMMY)
    assert (found.connector, found.count, found.kv_bytes) == (DUMMY, 2, 40)
    assert kv_metrics.delta(before, after, "some-mode").connector == DUMMY  # whichever connector moved data
    assert DUMMY in registry.connectors() and "none" not in registry.connectors()
