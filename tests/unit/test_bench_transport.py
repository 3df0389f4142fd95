"""`disagg bench transport`: every method really moves the bytes between two processes, small sizes."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import statistics

import numpy as np
import pytest

from bench.xfer import bench as xfer_bench
from bench.xfer import buffers as xfer_buffers
from bench.xfer.bench import MEMCPY, SOCKET, BenchSettings, Measurement, method_names, run_bench
from bench.xfer.buffers import MIB

pytestmark = pytest.mark.timeout(120)

SIZES = (1 * MIB, 2 * MIB)
REPEATS = 2
NIXL_METHODS = ("nixl-ucx", "nixl-ucx-tcp")
METHOD_NAMES = method_names()  # the registered transports' methods and the baselines


@pytest.fixture(scope="module")
def report() -> xfer_bench.BenchReport:
    """One run of every method at two small sizes, shared by the tests below."""
    return run_bench(BenchSettings(sizes_bytes=SIZES, repeats=REPEATS, max_duration_s=240))


class WrongBytesSource:
    """A socket source that serves zeros instead of the pattern: the sink must notice."""

    def __new__(cls):  # noqa: D102 - built by the peer process
        from bench.xfer import peers as xfer_peers

        peer = xfer_peers.SocketSource()
        peer.prepare = lambda size_bytes, transfers: _serve_zeros(peer, size_bytes, transfers)
        return peer


def _serve_zeros(peer, size_bytes: int, transfers: int) -> dict:
    from bench.xfer import peers as xfer_peers

    endpoint = xfer_peers.SocketSource.prepare(peer, size_bytes, transfers)
    peer._buffer.fill(0)  # the serving thread sends from this very buffer
    return endpoint


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_moves_every_size(report, method):
    if method in NIXL_METHODS and importlib.util.find_spec("nixl") is None:
        pytest.skip("NIXL is not installed here")
    for size_bytes in SIZES:
        measurement = report.get(method, size_bytes)
        assert measurement is not None
        assert measurement.status == "ok", measurement.reason
        assert len(measurement.samples_s) == REPEATS and all(s > 0 for s in measurement.samples_s)
        median_s = statistics.median(measurement.samples_s)
        assert measurement.gb_per_s == pytest.approx(size_bytes / median_s / 1e9)


def test_json_rows_have_every_field_and_consistent_ratios(report):
    results = json.loads(json.dumps(report.to_json()))
    assert set(results["methods"]) == set(METHOD_NAMES)
    assert len(results["results"]) == len(METHOD_NAMES) * len(SIZES)
    rows = {(row["method"], row["size_bytes"]): row for row in results["results"]}
    for row in results["results"]:
        assert set(row) >= {"method", "size_bytes", "size_mib", "status", "reason", "samples_s", "gb_per_s",
                            "ratio_to_socket", "ratio_to_memcpy"}
    for size_bytes in SIZES:
        socket_gb_s = rows[(SOCKET, size_bytes)]["gb_per_s"]
        memcpy_gb_s = rows[(MEMCPY, size_bytes)]["gb_per_s"]
        assert rows[(SOCKET, size_bytes)]["ratio_to_socket"] == 1.0
        assert rows[(MEMCPY, size_bytes)]["ratio_to_memcpy"] == 1.0
        for method in METHOD_NAMES:
            row = rows[(method, size_bytes)]
            if row["gb_per_s"] is None:
                assert row["ratio_to_socket"] is None and row["ratio_to_memcpy"] is None
                continue
            # The JSON rounds to 4 decimals; the ratios are of the unrounded figures.
            exact = {name: report.get(name, size_bytes).gb_per_s for name in (method, SOCKET, MEMCPY)}
            assert row["gb_per_s"] == pytest.approx(exact[method], abs=1e-4)
            assert row["ratio_to_socket"] == pytest.approx(exact[method] / exact[SOCKET], abs=1e-4)
            assert row["ratio_to_memcpy"] == pytest.approx(exact[method] / exact[MEMCPY], abs=1e-4)
            assert socket_gb_s == pytest.approx(exact[SOCKET], abs=1e-4)
            assert memcpy_gb_s == pytest.approx(exact[MEMCPY], abs=1e-4)


def test_unavailable_method_is_reported_and_the_others_still_run(monkeypatch):
    every = xfer_bench.methods()
    missing = dataclasses.replace(every[1], source_class="transport.no_such_module:Source",
                                  sink_class="transport.no_such_module:Sink")
    monkeypatch.setattr(xfer_bench, "methods", lambda: (missing, *[m for m in every if m.name == MEMCPY]))
    seen: list[Measurement] = []
    result = run_bench(BenchSettings(sizes_bytes=(MIB,), repeats=1, methods=(missing.name, MEMCPY)), seen.append)
    assert [m.method for m in seen] == [missing.name, MEMCPY]  # progress reported as it goes
    nixl, memcpy = result.measurements
    assert nixl.status == "unavailable" and "no_such_module" in nixl.reason and nixl.gb_per_s is None
    assert memcpy.status == "ok"


def test_bytes_that_differ_are_a_failure(monkeypatch):
    lying = dataclasses.replace(next(m for m in xfer_bench.methods() if m.name == SOCKET),
                                source_class=f"{__name__}:WrongBytesSource")
    monkeypatch.setattr(xfer_bench, "methods", lambda: (lying,))
    result = run_bench(BenchSettings(sizes_bytes=(MIB,), repeats=1, methods=(SOCKET,)))
    (measurement,) = result.measurements
    assert measurement.status == "failed" and "differ" in measurement.reason


def test_time_budget_skips_what_is_left():
    result = run_bench(BenchSettings(sizes_bytes=(MIB, 2 * MIB), repeats=1, max_duration_s=1e-6,
                                     methods=(MEMCPY,)))
    assert [m.status for m in result.measurements] == ["skipped", "skipped"]
    assert "--max-duration-s" in result.measurements[0].reason


@pytest.mark.parametrize("bad", [
    {"sizes_bytes": (MIB + 1,)}, {"sizes_bytes": ()}, {"repeats": 0}, {"methods": ("carrier-pigeon",)},
    {"max_duration_s": 0},
])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        BenchSettings(**bad)


def test_layout_pattern_and_descriptors(monkeypatch):
    layout = xfer_buffers.layout_for(MIB)
    assert (layout.layers, layout.num_blocks, layout.block_nbytes) == (16, 1, 64 * 1024)
    assert xfer_buffers.layout_for(512 * MIB).num_blocks == 512
    buffer = xfer_buffers.pattern_buffer(MIB)
    assert xfer_buffers.holds_pattern(buffer)
    buffer[MIB - 1] ^= 1
    assert not xfer_buffers.holds_pattern(buffer)
    monkeypatch.setattr(xfer_buffers, "_FULL_CHECK_MAX_BYTES", 0)  # the sampled check, used above 64 MiB
    assert not xfer_buffers.holds_pattern(buffer)  # the last window is always checked
    assert xfer_buffers.holds_pattern(xfer_buffers.pattern_buffer(MIB))
    descriptors = xfer_buffers.block_descriptors(4096, layout)
    assert descriptors.shape == (16, 3) and descriptors.dtype == np.uint64
    assert descriptors[1].tolist() == [4096 + 64 * 1024, 64 * 1024, 0]


def test_cli_writes_json_and_refuses_bad_options(tmp_path, capsys):
    from disagg.cli import main

    out = tmp_path / "transport.json"
    assert main(["bench", "transport", "--sizes-mb", "1", "--repeats", "1", "--methods", "socket,memcpy",
                 "--json", "--output", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert {row["method"] for row in printed["results"]} == {SOCKET, MEMCPY}
    assert main(["bench", "transport", "--methods", "carrier-pigeon"]) == 2


def test_methods_are_the_registered_transports_then_the_baselines():
    assert method_names() == ("tcp-connector", "nixl-ucx", "nixl-ucx-tcp", "tcp-connector-int8",
                              "tcp-connector-bf16", "tcp-connector-fp16", SOCKET, MEMCPY)
    from transport import registry

    declared = {m.name for t in registry.all_transports() for m in t.bench_methods}
    assert declared == set(method_names()) - {SOCKET, MEMCPY}
