"""Pre-flight verdicts on what hosts report: another disagg, no vLLM, a vLLM outside the supported range,
different vLLMs on the two nodes, a missing model, a cluster token file that is missing, empty or open to
other users, different tokens on different hosts. Each problem names its host."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from deploy import cluster_file, preflight
from deploy.cluster_plan import plan
from deploy.host_agent import source_fingerprint
from deploy.remote import hosts_of

SPEC = cluster_file.load(Path(__file__).resolve().parents[2] / "deploy" / "examples" / "two-linux-tcp.toml")
TOKEN_PATH = "/home/ubuntu/.config/disagg/cluster-token"


def report(**changes) -> dict:
    base = {"disagg": metadata.version("disagg"), "source": source_fingerprint(), "python": "3.11.7",
            "vllm": "0.32.0", "vllm_range": "<0.33,>=0.32", "vllm_supported": True, "addresses": {},
            "busy_ports": [], "running": {}, "model": {"path": "/m", "ok": True},
            "token_file": token_file()}
    return {**base, **changes}


def token_file(*problems: str, fingerprint: str | None = "0123456789abcdef") -> dict:
    return {"path": TOKEN_PATH, "problems": list(problems), "fingerprint": None if problems else fingerprint}


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


def test_ports_in_the_ephemeral_range_are_warned_about_not_refused():
    components = [c for c in plan(SPEC) if c.host == "box-a"]
    where = hosts_of(SPEC)["box-a"].where
    assert preflight._ephemeral_port_warnings(where, components, report(ephemeral_ports=[32768, 60999])) == []
    warnings = preflight._ephemeral_port_warnings(where, components, report(ephemeral_ports=[8101, 60999]))
    [first] = [w for w in warnings if "8101" in w]
    assert first.startswith("box-a (ubuntu@192.168.1.21): port 8101 on 192.168.1.21 (prefill.info_port) lies in "
                            "the kernel's ephemeral port range 8101-60999") and "below 8101" in first
    assert all("8100 " not in w for w in warnings)  # below the range
    assert preflight._ephemeral_port_warnings(where, components, report(ephemeral_ports=[8101, 60999],
                                                                         running={"prefill": 1})) == [
        w for w in warnings if "(prefill." not in w]  # a running component is not restarted by this `up`
    assert preflight._ephemeral_port_warnings(where, components, report()) == []  # an agent that does not say
    assert problems_of("box-a", report(ephemeral_ports=[1024, 65535])) == []


def test_different_vllm_on_the_two_nodes():
    [problem] = preflight._vllm_mismatch(SPEC, {"box-a": report(), "box-b": report(vllm="0.32.1")})
    assert "box-a has 0.32.0, box-b has 0.32.1" in problem


def test_token_file_missing_empty_or_open_is_named_with_its_host():
    [missing] = problems_of("box-a", report(token_file=token_file("not found")))
    assert missing.startswith(f"box-a (ubuntu@192.168.1.21): token_file {TOKEN_PATH}: not found; put the "
                              "cluster's token there, the same on every host")
    [empty] = problems_of("box-b", report(token_file=token_file("empty")))
    assert empty == f"box-b (ubuntu@192.168.1.22): token_file {TOKEN_PATH}: empty"
    [open_to_others] = problems_of("local", report(token_file=token_file("open to group or others (mode 644; "
                                                                        "chmod 600 it)")))
    assert open_to_others.startswith(f"local (this machine): token_file {TOKEN_PATH}: open to group or others")


def test_different_tokens_on_the_hosts_are_named():
    hosts = hosts_of(SPEC)
    same = {name: report() for name in ("box-a", "box-b", "local")}
    assert preflight._token_mismatch(SPEC, hosts, same) == []
    differ = {**same, "box-b": report(token_file=token_file(fingerprint="fedcba9876543210"))}
    [problem] = preflight._token_mismatch(SPEC, hosts, differ)
    assert problem.startswith("token_file ~/.config/disagg/cluster-token holds different tokens on the hosts")
    assert "box-a (ubuntu@192.168.1.21), local (this machine); box-b (ubuntu@192.168.1.22)" in problem
    unusable = {**same, "box-b": report(token_file=token_file("empty"))}  # reported as such, not as a mismatch
    assert preflight._token_mismatch(SPEC, hosts, unusable) == []


def test_every_host_is_asked_about_the_token_file_only_when_the_file_sets_one():
    asked = []

    class FakeHost:
        def agent(self, args, *, timeout_s):
            asked.append(args)
            return {}

    components = [c for c in plan(SPEC) if c.host == "local"]
    preflight._ask(SPEC, FakeHost(), components)
    preflight._ask(SPEC.model_copy(update={"token_file": None}), FakeHost(), components)
    with_token, without = asked
    assert with_token[with_token.index("--token-file") + 1] == "~/.config/disagg/cluster-token"
    assert "--token-file" not in without
    assert preflight._token_problems(SPEC.model_copy(update={"token_file": None}), "x", {}) == []
