"""Differential test: every request shape of the corpus (request_shapes.py), unary and streamed, gets the same
answer from the disaggregated router as from the colocated baseline router over the same real vLLM: the same
status, the same text per choice (greedy and seeded), the same usage, valid SSE framing with exactly one
[DONE]. Every error body is in OpenAI's published `ErrorResponse` shape. Afterwards no request runs or waits
and no KV block is in use on either node, and no KV lease expired unpulled on the prefill node.

The per-shape outcome is printed and written to `request_shapes.json` in the cluster's log folder (and to
$DISAGG_SHAPES_REPORT when set).
"""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.integration import vllm_metrics
from tests.integration.checks import router_sample
from tests.integration.cluster_manager import _drained
from tests.integration.prompts import prompt_of, tokenizer
from tests.integration.request_shapes import corpus, differences, send
from tests.support.openai_schema import error_response_problems

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]
EXPIRED = "vllm:disagg_tcp_kv_expired_leases_total"
# OpenAI's codes for what vLLM 0.32 says (core.errors.relayed_code) and for the router's own refusals
EXPECTED_CODES = {"c-bad-long": "context_length_exceeded", "h-bad-long": "context_length_exceeded",
                  "c-bad-list-long": "context_length_exceeded", "c-bad-unknown-model": "model_not_found",
                  "h-bad-unknown-model": "model_not_found", "c-bad-max-huge": "invalid_value",
                  "h-bad-role": "invalid_value", "c-bad-temperature": "invalid_type"}


def test_every_request_shape_gets_the_colocated_answer_and_nothing_leaks(tcp_cluster):
    tok = tokenizer(tcp_cluster.model_dir)
    shapes = corpus(tcp_cluster.model_name, lambda text: tok(text, add_special_tokens=False)["input_ids"],
                    prompt_of(tcp_cluster.model_dir, 2100, tag="[shapes-too-long]"))
    expired_before = vllm_metrics.read(tcp_cluster.prefill_vllm_url).get(EXPIRED, 0.0)
    started_s, results, bad_errors = time.monotonic(), {}, []
    for shape in shapes:
        for mode in shape.modes:
            body = {**shape.body, "stream": mode == "stream"} if "stream" not in shape.body else shape.body
            disagg = send(tcp_cluster.router_url, shape.endpoint, body)
            colocated = send(tcp_cluster.baseline_url, shape.endpoint, body)
            results[f"{shape.name}/{mode}"] = {"status": disagg.status, "diffs": differences(disagg, colocated)}
            for who, answer in (("disagg", disagg), ("colocated", colocated)):
                problems = error_response_problems(answer.error) if answer.error is not None else []
                code = (answer.error or {}).get("error", {}).get("code")
                if shape.name in EXPECTED_CODES and code != EXPECTED_CODES[shape.name]:
                    problems.append(f"code {code!r}, not {EXPECTED_CODES[shape.name]!r}: {answer.error}")
                bad_errors += [f"{shape.name}/{mode} {who}: {p}" for p in problems]
    elapsed_s = time.monotonic() - started_s
    equal = [name for name, r in results.items() if not r["diffs"]]
    served = [name for name in equal if results[name]["status"] == 200]
    summary = {"shapes": len(shapes), "requests": len(results), "equal": len(equal),
               "equal_and_served": len(served), "seconds": round(elapsed_s),
               "bad_error_bodies": bad_errors[:50],
               "different": {name: r for name, r in results.items() if r["diffs"]}}
    _report(tcp_cluster, summary)

    drained = _drained(tcp_cluster)  # waits up to 60 s, longer than a KV lease (a lease left holds blocks)
    time.sleep(6.0)  # vLLM publishes connector counters (expired leases) on its stats interval
    expired = vllm_metrics.read(tcp_cluster.prefill_vllm_url).get(EXPIRED, 0.0) - expired_before
    assert len(shapes) >= 60 and len(results) >= 120
    assert not summary["different"], json.dumps(summary["different"], indent=1)[:6000]
    assert not bad_errors, bad_errors[:20]
    assert drained == {}, f"still in use after the corpus: {drained}"
    assert expired == 0, f"{expired:.0f} KV leases expired unpulled"
    for gauge in ("disagg_router_requests_in_flight", "disagg_router_requests_queued"):
        assert router_sample(tcp_cluster.router_url, gauge) == 0, gauge


def _report(cluster, summary: dict) -> None:
    text = json.dumps(summary, indent=1)
    print(f"request shapes: {summary['equal']}/{summary['requests']} equal to colocated, "
          f"{summary['equal_and_served']} of them served (200) ({summary['shapes']} shapes, "
          f"{summary['seconds']} s)\n{text[:8000]}")
    (cluster.log_dir / "request_shapes.json").write_text(text)
    if os.environ.get("DISAGG_SHAPES_REPORT"):
        with open(os.environ["DISAGG_SHAPES_REPORT"], "w") as out:
            out.write(text)
