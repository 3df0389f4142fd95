"""Prefix-aware routing over two real prefill nodes (vLLM with KV events) and a decode node, tcp transport.

Its own cluster (bench.prefix_cluster, the cluster bench multiturn --local runs): the session's clusters have
one prefill node and run without prefix caching, and prefix routing needs two nodes with their caches on.
`up --local` starts one prefill node, so the spec is built directly ([[prefill]] arrays); the session's
cluster is stopped first (one cluster at a time on this box). Three vLLM servers on two cores: prefill-1 on
core 0, prefill-2 and decode on core 1; turns go one at a time and are one-token (served by a prefill node
alone), so the runs test routing, not the KV transfer.

What it shows, with 8 conversations x 3 turns behind a shared system prompt (prompts of 300-450 tokens):
- the router tokenizes as vLLM does: its token ids equal the node's POST /tokenize for several
  conversations and prompts (and the round trip it saves is measured, in the log folder);
- with prefix_aware, turns 2 and 3 land on the node that served the conversation's first turn: the router
  counts them as hits, and the nodes' own prefix-cache counters agree with the router's prediction; round
  robin on the same nodes (its own conversations) for comparison: both hit rates side by side;
- a greedy answer served with a local prefix-cache hit equals the colocated baseline's;
- a router started later learns the nodes' blocks from their replay buffers and routes by them at once;
- a restarted prefill node (its vLLM server killed, the supervisor starts a new one) is forgotten by the
  router, then learned again from its new events.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import httpx
import pytest

from bench import multiturn, multiturn_report, prefix_cluster
from bench.datasets import load_tokenizer
from bench.multiturn_run import RunSettings, run_workload
from node.settings import EngineSettings
from router import tokenize, tokenizer_files
from tests.integration import vllm_metrics
from tests.integration.checks import router_sample

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
TURNS, CONVERSATIONS = 3, 8
# One answer token: the router serves such a turn on the prefill node it picks, alone (no decode, no KV pull), so
# the runs test routing and cost ~0.5 s a turn. With 16 tokens through P/D, the decode node (sharing core 0 with
# prefill-1 on this 2-core box) saw most KV pulls from prefill-1 stall until the lease expired (20-60 s a turn);
# the other requests here are one-token too, but for the greedy equality check, which goes through P/D.
ANSWER_TOKENS = 1


@pytest.fixture(scope="module")
def cluster(clusters, tmp_path_factory):
    clusters.stop()  # one cluster at a time on this box
    engine = EngineSettings(kv_events=True, kv_lease_s=20, kv_transfer_timeout_s=10, restart_on_crash=1)
    cores = ("0", "1", "1")  # decode beside prefill-2: prefix_aware sends these conversations to prefill-1
    with prefix_cluster.running(clusters.model_dir, tmp_path_factory.mktemp("prefix"), engine,
                                cores=cores) as running:
        yield running


@pytest.fixture(scope="module")
def ours(cluster):
    return tokenize.PromptTokenizer(tokenizer_files.from_folder(cluster.model_dir))


@pytest.fixture(scope="module")
def runs(cluster, ours):
    """The same workload generator through a prefix_aware and a round_robin router (own conversations each)."""
    hf = load_tokenizer(str(cluster.model_dir))
    out = {}
    with prefix_cluster.extra_router(cluster, "--prefill-policy", "round_robin", name="router-rr") as rr_url:
        for index, (policy, url) in enumerate((("prefix_aware", cluster.router_url), ("round_robin", rr_url))):
            workload = multiturn.synthetic(CONVERSATIONS, TURNS, 150, 150, 40, seed=7 + 1000 * index, tokenizer=hf)
            settings = RunSettings(url=url, model=cluster.model_dir.name, max_tokens=ANSWER_TOKENS)
            before = {k: router_sample(url, k) for k in ("disagg_router_prefix_cached_tokens_total",)}
            turns = [t.to_json() for t in asyncio.run(run_workload(settings, workload, list(cluster.nodes), ours))]
            predicted = router_sample(url, "disagg_router_prefix_cached_tokens_total") - \
                before["disagg_router_prefix_cached_tokens_total"]
            out[policy] = {"policy": policy, "url": url, "workload": workload.describe(), "turns": turns,
                           "summary": multiturn_report.summarize(turns), "predicted": predicted, "work": workload}
    report = {"model": cluster.model_dir.name, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "settings": {"max_tokens": ANSWER_TOKENS}, "workload": out["prefix_aware"]["workload"],
              "nodes": [{"name": n.name, "role": n.role, "url": n.vllm_url} for n in cluster.nodes],
              "runs": [{k: v for k, v in run.items() if k != "work"} for run in out.values()]}
    (cluster.log_dir / "multiturn-report.md").write_text(multiturn_report.render(report))
    return out


def _headers(cluster) -> dict[str, str]:
    return {"Authorization": f"Bearer {cluster.token()}"}


def test_the_router_tokenizes_as_the_node_does(cluster, ours):
    node = cluster.prefill_nodes[0].vllm_url
    conversations = [
        [{"role": "user", "content": "Hello!"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Rivers?"},
         {"role": "assistant", "content": "Nile."}, {"role": "user", "content": [{"type": "text", "text": "More"},
                                                                                  {"type": "text", "text": "please"}]}],
        multiturn.messages(multiturn.synthetic(1, 2, 150, 300, 40, seed=3).conversations[0], 1, ["An answer, with: 42."]),
    ]
    timings_s = []
    for messages in conversations:
        started_s = time.perf_counter()
        resp = httpx.post(f"{node}/tokenize", json={"model": cluster.model_dir.name, "messages": messages},
                          headers=_headers(cluster), timeout=60)
        timings_s.append(time.perf_counter() - started_s)
        assert resp.status_code == 200, resp.text
        assert ours.token_ids("chat", {"messages": messages}) == resp.json()["tokens"]
    for prompt in ("The lighthouse keepers wrote the log.", "  two  spaces\nand ünïcode ✓"):
        resp = httpx.post(f"{node}/tokenize", json={"model": cluster.model_dir.name, "prompt": prompt},
                          headers=_headers(cluster), timeout=60)
        assert ours.token_ids("completions", {"prompt": prompt}) == resp.json()["tokens"]
    local_s = []
    for messages in conversations:
        started_s = time.perf_counter()
        ours.token_ids("chat", {"messages": messages})
        local_s.append(time.perf_counter() - started_s)
    (cluster.log_dir / "tokenize-round-trip.json").write_text(json.dumps(
        {"node_tokenize_ms": [t * 1000 for t in timings_s], "router_local_ms": [t * 1000 for t in local_s]}))


def test_turns_land_on_the_node_holding_their_prefix_and_the_nodes_agree(cluster, runs):
    prefix, rr = runs["prefix_aware"]["summary"], runs["round_robin"]["summary"]
    for run in runs.values():
        assert run["summary"]["ok"] == CONVERSATIONS * TURNS, [t["error"] for t in run["turns"] if not t["ok"]]
    assert prefix["on_their_node"]["count"] == prefix["on_their_node"]["turns"] == CONVERSATIONS * (TURNS - 1)
    hits = router_sample(cluster.router_url, "disagg_router_prefix_routes_total", outcome="hit")
    assert hits >= CONVERSATIONS * (TURNS - 1)
    assert runs["prefix_aware"]["predicted"] == prefix["hit_tokens"], "the router's prediction vs the nodes' hits"
    assert prefix["hit_rate_vs_ideal"] >= 0.9 and rr["hit_rate_vs_ideal"] < prefix["hit_rate_vs_ideal"], \
        (prefix["hit_rate_vs_ideal"], rr["hit_rate_vs_ideal"])
    for turn in runs["prefix_aware"]["turns"]:
        if turn["turn"] > 0:  # the serving node's own counter shows the prefix it held
            assert turn["node_deltas"][turn["node"]].get("vllm:prefix_cache_hits_total", 0) >= 256


def test_a_greedy_answer_with_a_prefix_cache_hit_equals_colocated(cluster, runs):
    run = runs["prefix_aware"]
    by_turn = {(t["conversation"], t["turn"]): t for t in run["turns"]}
    for conversation in run["work"].conversations[:1]:  # one: a P/D request may wait out a stalled pull (above)
        answers = [by_turn[(conversation.index, 0)]["answer"], by_turn[(conversation.index, 1)]["answer"]]
        body = {"model": cluster.model_dir.name, "messages": multiturn.messages(conversation, 2, answers),
                "max_tokens": 12, "temperature": 0, "ignore_eos": True}
        node = next(n for n in cluster.prefill_nodes if n.name == by_turn[(conversation.index, 2)]["node"])
        before = vllm_metrics.read(node.vllm_url)
        disagg = httpx.post(f"{cluster.router_url}/v1/chat/completions", json=body, timeout=300).json()
        after = vllm_metrics.read(node.vllm_url)
        colocated = httpx.post(f"{cluster.baseline_url}/v1/chat/completions", json=body, timeout=300).json()
        assert vllm_metrics.delta(before, after, "vllm:prefix_cache_hits_total") >= 256, "no hit on the holding node"
        assert disagg["choices"][0]["message"]["content"] == colocated["choices"][0]["message"]["content"]
        assert disagg["usage"]["completion_tokens"] == colocated["usage"]["completion_tokens"] == 12


def test_a_router_started_later_replays_what_the_nodes_hold(cluster, runs):
    run = runs["prefix_aware"]
    first = next(t for t in run["turns"] if t["turn"] == TURNS - 1)
    conversation = run["work"].conversations[first["conversation"]]
    answers = [t["answer"] for t in sorted((t for t in run["turns"] if t["conversation"] == conversation.index),
                                           key=lambda t: t["turn"])]
    with prefix_cluster.extra_router(cluster, "--prefill-policy", "prefix_aware", name="router-late") as url:
        deadline_s = time.monotonic() + 30
        while not all(router_sample(url, "disagg_router_kv_index_blocks", node=cluster.info_url(n)) > 0
                      for n in cluster.prefill_nodes):
            assert time.monotonic() < deadline_s, "the late router did not replay the nodes' events"
            time.sleep(0.5)
        messages = multiturn.messages(conversation, TURNS - 1, answers[:-1])
        messages += [{"role": "assistant", "content": answers[-1]}, {"role": "user", "content": "Thanks, and?"}]
        body = {"model": cluster.model_dir.name, "messages": messages, "max_tokens": 1, "temperature": 0}
        assert httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300).status_code == 200
        holder = cluster.info_url(next(n for n in cluster.prefill_nodes if n.name == first["node"]))
        assert router_sample(url, "disagg_router_prefix_routes_total", node=holder, outcome="hit") == 1


def test_a_restarted_prefill_node_is_forgotten_then_learned_again(cluster, runs):
    node = cluster.prefill_nodes[1]
    info = httpx.get(f"{cluster.info_url(node)}/info", headers=_headers(cluster), timeout=10).json()
    blocks = router_sample(cluster.router_url, "disagg_router_kv_index_blocks", node=cluster.info_url(node))
    assert blocks > 0
    os.killpg(os.getpgid(info["pid"]), signal.SIGKILL)  # the supervisor restarts it (restart_on_crash=1)
    deadline_s = time.monotonic() + 600
    while True:
        resets = sum(router_sample(cluster.router_url, "disagg_router_kv_index_resets_total",
                                   node=cluster.info_url(node), reason=r) for r in ("node_restarted", "sequence_reset"))
        now = httpx.get(f"{cluster.info_url(node)}/info", headers=_headers(cluster), timeout=10).json()
        if resets >= 1 and now["engine_ready"] and now["pid"] != info["pid"]:
            break
        assert time.monotonic() < deadline_s, "the node did not come back, or the router did not forget it"
        time.sleep(2)
    assert router_sample(cluster.router_url, "disagg_router_kv_index_blocks", node=cluster.info_url(node)) == 0
    work = multiturn.synthetic(2, 1, 150, 150, 40, seed=99)
    for i, conversation in enumerate(work.conversations):  # round robin on empty caches: one lands on it
        body = {"model": cluster.model_dir.name, "messages": multiturn.messages(conversation, 0, []),
                "max_tokens": 1, "temperature": 0}
        assert httpx.post(f"{cluster.router_url}/v1/chat/completions", json=body, timeout=300).status_code == 200
    deadline_s = time.monotonic() + 60
    while router_sample(cluster.router_url, "disagg_router_kv_index_blocks", node=cluster.info_url(node)) == 0:
        assert time.monotonic() < deadline_s, "the router did not learn the restarted node's new blocks"
        time.sleep(0.5)
