"""Pull time per KV wire dtype inside vLLM, across the rate-limited link of `bench.kv_wire_link` (run as root).

    python -m bench.kv_wire_node_link --rate 1gbit --num-prompts 4 --output nodes-link.json

A tcp prefill node runs in namespace `dkvw-src` (vLLM and its block server on 10.79.12.1, core 0), a tcp
decode node in `dkvw-dst` (core 1); the veth between them is limited with the same `tc tbf` as
`deploy/two_hosts.sh limit`. A driver in `dkvw-dst` sends the longest prompts of the quality set through
vLLM's P/D protocol (`bench.quality.disaggregated`, 2 tokens each: the pull is what is measured) once per
wire dtype, and reads the decode node's own metrics around each wire dtype's requests: mean seconds per
pull (`vllm:disagg_tcp_kv_pull_seconds`), bytes on the wire and KV restored.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.kv_wire_link import ADDRESSES, NAMESPACES, REPO, link_down, link_up

PREFILL_PORT, DECODE_PORT, KV_PORTS = 18710, 18720, (25710, 25720)
METRICS = {"seconds": "vllm:disagg_tcp_kv_pull_seconds_sum", "pulls": "vllm:disagg_tcp_kv_pull_seconds_count",
           "wire_bytes": "vllm:disagg_tcp_kv_pulled_bytes_total", "kv_bytes": "vllm:disagg_tcp_kv_restored_bytes_total"}
READY_TIMEOUT_S = 600.0


def _node(namespace: str, role: str, port: int, kv_port: int, host: str, core: str, log: Path) -> subprocess.Popen:
    argv = ["ip", "netns", "exec", namespace, sys.executable, "-m", "disagg", role, "--transport", "tcp",
            "--host", host, "--port", str(port), "--info-port", str(port + 1), "--kv-host", ADDRESSES[int(core)],
            "--kv-port", str(kv_port), "--kv-peer", ADDRESSES[1 - int(core)], "--cpu-cores", core,
            "--no-prefix-caching"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISAGG_")}
    return subprocess.Popen(argv, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            env={**env, "PYTHONPATH": str(REPO)}, start_new_session=True)


def drive(prefill_url: str, decode_url: str, wires: list[str], num_prompts: int) -> list[dict[str, Any]]:
    """In `dkvw-dst`: wait for both nodes, then per wire dtype the prompts and the decode node's metric deltas."""
    import httpx

    from bench.kv_metrics import parse
    from bench.quality import Nodes, disaggregated
    from bench.quality_prompts import prompt_set

    for url in (prefill_url, decode_url):
        deadline_s = time.monotonic() + READY_TIMEOUT_S
        while not _healthy(httpx, url.rsplit(":", 1)[0] + f":{int(url.rsplit(':', 1)[1]) + 1}/health"):
            if time.monotonic() > deadline_s:
                raise SystemExit(f"{url} not ready")
            time.sleep(2.0)
    model = httpx.get(f"{decode_url}/v1/models", timeout=10).json()["data"][0]["id"]
    nodes = Nodes(prefill_url, decode_url, model)
    prompts = sorted(prompt_set(), key=lambda p: -len(p.text))[:num_prompts]
    rows = []
    with httpx.Client() as client:
        disaggregated(client, nodes, prompts[-1].text, 2, "native", "warm-up")
        for wire in wires:
            before = parse(httpx.get(f"{decode_url}/metrics", timeout=10).text)
            for prompt in prompts:
                disaggregated(client, nodes, prompt.text, 2, wire, f"link-{wire}")
            time.sleep(2.0)  # the connector's stats reach /metrics with the engine's next step
            after = parse(httpx.get(f"{decode_url}/metrics", timeout=10).text)
            delta = {key: after.get(name, 0.0) - before.get(name, 0.0) for key, name in METRICS.items()}
            rows.append({"wire_dtype": wire, **delta, "mean_pull_s": delta["seconds"] / max(delta["pulls"], 1),
                         "mean_wire_bytes": delta["wire_bytes"] / max(delta["pulls"], 1)})
    return rows


def _healthy(httpx: Any, url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "drive":
        print(json.dumps(drive(argv[1], argv[2], argv[3].split(","), int(argv[4]))), flush=True)
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.kv_wire_node_link", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", default="1gbit")
    parser.add_argument("--wire-dtypes", default="native,bf16,fp16,int8")
    parser.add_argument("--num-prompts", type=int, default=4)
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/kv-wire-node-link"))
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    link_up(args.rate)
    nodes = [_node(NAMESPACES[0], "prefill", PREFILL_PORT, KV_PORTS[0], ADDRESSES[0], "0", 
                   args.log_dir / "prefill.log"),
             _node(NAMESPACES[1], "decode", DECODE_PORT, KV_PORTS[1], "127.0.0.1", "1", args.log_dir / "decode.log")]
    try:
        driver = subprocess.run(["ip", "netns", "exec", NAMESPACES[1], sys.executable, "-m", "bench.kv_wire_node_link",
                                 "drive", f"http://{ADDRESSES[0]}:{PREFILL_PORT}", f"http://127.0.0.1:{DECODE_PORT}",
                                 args.wire_dtypes, str(args.num_prompts)], capture_output=True, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=READY_TIMEOUT_S + 900)
        if driver.returncode != 0:
            print(driver.stderr[-3000:], file=sys.stderr)
            return 1
        rows = json.loads(driver.stdout.strip().splitlines()[-1])
    finally:
        for node in nodes:
            try:
                os.killpg(node.pid, 15)
                node.wait(timeout=90)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(node.pid, 9)
        link_down()
    native = next(r for r in rows if r["wire_dtype"] == "native")
    for row in rows:
        row["time_vs_native"] = round(row["mean_pull_s"] / native["mean_pull_s"], 4)
        row["wire_bytes_vs_native"] = round(row["wire_bytes"] / native["wire_bytes"], 4)
    text = json.dumps({"rate": args.rate, "command": "python -m bench.kv_wire_node_link " + " ".join(argv),
                       "results": rows}, indent=1)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
