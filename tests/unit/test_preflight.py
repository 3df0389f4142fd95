"""Pre-flight verdicts on what hosts report: another disagg, no vLLM, a vLLM outside the supported range,
different vLLMs on the two nodes, a missing model. Each problem names its host."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from deploy import cluster_file, preflight
from deploy.cluster_plan import plan
from deploy.host_agent import source_fingerprint
from deploy.remote import hosts_of

SPEC = cluster_file.load(Path(__file__).resolve().parents[2] / "deploy" / "examples" / "two-linux-tcp.toml")


def report(**changes) -> dict:
    base = {"disagg": metadata.version("disagg"), "source": source_fingerprint(), "python": "3.11.7",
            "vllm": "0.32.0", "vllm_range": "<0.33,>=0.32", "vllm_supported": True, "addresses": {},
            "busy_ports": [], "running": {}, "model": {"path": "/m", "ok": True}}
    return {**base, **changes}


def problems_of(host: str, rep: dict) -> list[str]:
    components = [c for c in plan(SPEC) if c.host == host]
    return preflight._problems(SPEC, hosts_of(SPEC)[host], components, rep)


def test_a_healthy_report_has_no_problem():
    assert problems_of("box-a", report()) == []


def test_another_disagg_is_named():
    [problem] = problems_of("box-b", report(source="0123456789ab"))
    assert problem.startswith("box-b (ubuntu@192.168.1.22): disagg") and "source 0123456789ab" in problem


def test_missing_or_unsupported_vllm_and_missing_model_are_named():
    [missing] = problems_of("box-a", report(vllm=None, vllm_supported=None))
    assert missing.startswith("box-a (ubuntu@192.168.1.21): vLLM is not installed") and "<0.33,>=0.32" in missing
    old, model = problems_of("box-a", report(vllm="0.30.1", vllm_supported=False, model={"path": "/m", "ok": False}))
    assert "vLLM 0.30.1 is outside the range" in old and "model folder /m not found" in model


def test_busy_ports_are_named_by_field_unless_their_component_already_runs():
    busy = report(busy_ports=["192.168.1.21:8101"])
    assert problems_of("box-a", busy) == [
        "box-a (ubuntu@192.168.1.21): port 8101 on 192.168.1.21 (prefill.info_port) is already in use"]
    assert problems_of("box-a", {**busy, "running": {"prefill": 1234}}) == []


def test_different_vllm_on_the_two_nodes():
    [problem] = preflight._vllm_mismatch(SPEC, {"box-a": report(), "box-b": report(vllm="0.32.1")})
    assert "box-a has 0.32.0, box-b has 0.32.1" in problem
