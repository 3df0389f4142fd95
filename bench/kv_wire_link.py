"""Pull time per KV wire dtype across a rate-limited link between two network namespaces (run as root).

    python -m bench.kv_wire_link --rate 1gbit --sizes-mb 16,64 --repeats 3 --output link.json

Two namespaces (`dkvw-src`, `dkvw-dst`) joined by one veth pair (MTU 9000), rate-limited in both directions
with the qdisc `deploy/two_hosts.sh limit` uses (`tc ... tbf rate RATE burst 512kb latency 400ms`), so the
figures compare with its two-host tests; its own names, so it never touches a running two-host harness.
In `dkvw-src` a block server (`transport.tcp.server.BlockServer`) holds float32 KV (`bench.xfer.wire_peers`:
rows of 64 as SmolLM2's heads) and converts each frame to what the pull asks for; in `dkvw-dst` the pull
client (`transport.tcp.client.pull_blocks`) restores it and checks it within the wire dtype's bound. Per
size and wire dtype: one warm-up, then `repeats` timed pulls (connect to the last frame restored), the median
reported with the bytes on the wire. This is the connector's data path on a real (virtual) link; inside vLLM
the decode node's `vllm:disagg_tcp_kv_pull_seconds` measures the same span.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

NAMESPACES = ("dkvw-src", "dkvw-dst")
ADDRESSES = ("10.79.12.1", "10.79.12.2")
PORT = 5999
REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger(__name__)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def link_up(rate: str | None) -> None:
    """Create the namespaces and the veth between them (removing leftovers first); limit it to `rate`."""
    link_down()
    for namespace in NAMESPACES:
        _ip("netns", "add", namespace)
        _ip("netns", "exec", namespace, "ip", "link", "set", "lo", "up")
    _ip("link", "add", "kvw0", "netns", NAMESPACES[0], "mtu", "9000", "type", "veth", "peer", "name", "kvw0",
        "netns", NAMESPACES[1], "mtu", "9000")
    for namespace, address in zip(NAMESPACES, ADDRESSES):
        _ip("netns", "exec", namespace, "ip", "addr", "add", f"{address}/24", "dev", "kvw0")
        _ip("netns", "exec", namespace, "ip", "link", "set", "kvw0", "up")
        if rate:
            subprocess.run(["ip", "netns", "exec", namespace, "tc", "qdisc", "replace", "dev", "kvw0", "root", "tbf",
                            "rate", rate, "burst", "512kb", "latency", "400ms"], check=True, capture_output=True)


def link_down() -> None:
    for namespace in NAMESPACES:
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


def _peer(namespace: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(["ip", "netns", "exec", namespace, sys.executable, "-m", "bench.kv_wire_link", *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def serve(size_bytes: int, transfers: int) -> None:
    """Peer in dkvw-src: publish `transfers` copies of float32 KV, print the endpoint, serve until stdin closes."""
    from bench.xfer.buffers import layer_arrays, layout_for
    from bench.xfer.wire_peers import KV_DTYPE, ROW_ELEMENTS, kv_buffer
    from transport.tcp.blocks import RegionBlockStore
    from transport.tcp.codec import warm_up
    from transport.tcp.lease import LeaseTable
    from transport.tcp.server import BlockServer

    warm_up(KV_DTYPE, ROW_ELEMENTS)
    layout = layout_for(size_bytes)
    buffer = kv_buffer(size_bytes)
    store = RegionBlockStore.from_arrays(layer_arrays(buffer, layout), kv_dtype=KV_DTYPE, row_elements=ROW_ELEMENTS)
    leases = LeaseTable()
    for index in range(transfers):
        leases.publish(f"link-{index}", range(layout.num_blocks), 3600.0)
    server = BlockServer(store, leases, ADDRESSES[0], PORT, transfer_timeout_s=600.0)
    server.start()
    print(json.dumps({"host": ADDRESSES[0], "port": PORT, "layout_id": store.layout_id,
                      "block_nbytes": store.block_nbytes, "num_blocks": layout.num_blocks}), flush=True)
    sys.stdin.read()
    server.stop()


def pull(endpoint: dict[str, Any], size_bytes: int, wires: list[str], repeats: int) -> None:
    """Peer in dkvw-dst: per wire dtype, one warm-up and `repeats` timed pulls; print the results as JSON."""
    from bench.xfer.buffers import empty_buffer, layer_arrays, layout_for
    from bench.xfer.wire_peers import KV_DTYPE, ROW_ELEMENTS, holds_kv
    from transport.tcp.blocks import RegionBlockStore
    from transport.tcp.client import pull_blocks
    from transport.tcp.codec import Codec, warm_up
    from transport.tcp.wire import PullRequest
    from transport.tcp.wire_dtype import WireDtype, parse

    warm_up(KV_DTYPE, ROW_ELEMENTS)
    layout = layout_for(size_bytes)
    rows, index = [], 0
    for name in wires:
        wire = parse(name)
        buffer = empty_buffer(size_bytes)
        store = RegionBlockStore.from_arrays(layer_arrays(buffer, layout), layout_id=endpoint["layout_id"],
                                             kv_dtype=KV_DTYPE, row_elements=ROW_ELEMENTS)
        views, _ = store.write_views(list(range(layout.num_blocks)))
        request = PullRequest(0, endpoint["num_blocks"], endpoint["block_nbytes"], endpoint["layout_id"], wire)
        codec = None if wire is WireDtype.NATIVE else Codec(wire, KV_DTYPE, ROW_ELEMENTS)
        seconds, wire_nbytes = [], 0
        for _ in range(repeats + 1):
            result = pull_blocks(endpoint["host"], endpoint["port"], f"link-{index}", request, views,
                                 transfer_timeout_s=600.0, codec=codec)
            index += 1
            seconds.append(result.seconds)
            wire_nbytes = result.wire_nbytes
        rows.append({"wire_dtype": name, "kv_bytes": size_bytes, "wire_bytes": wire_nbytes,
                     "samples_s": [round(s, 5) for s in seconds[1:]], "median_s": statistics.median(seconds[1:]),
                     "verified": holds_kv(buffer, wire)})
    print(json.dumps(rows), flush=True)


def measure(rate: str | None, sizes_mb: list[int], wires: list[str], repeats: int) -> list[dict[str, Any]]:
    """Every size and wire dtype over a fresh link limited to `rate` (None: unlimited)."""
    link_up(rate)
    rows: list[dict[str, Any]] = []
    try:
        for size_mb in sizes_mb:
            size_bytes = size_mb * 2**20
            source = _peer(NAMESPACES[0], "serve", str(size_bytes), str(len(wires) * (repeats + 1)))
            try:
                endpoint = source.stdout.readline()
                sink = subprocess.run(["ip", "netns", "exec", NAMESPACES[1], sys.executable, "-m",
                                       "bench.kv_wire_link", "pull", endpoint, str(size_bytes), ",".join(wires),
                                       str(repeats)], capture_output=True, text=True, check=True,
                                      env={**os.environ, "PYTHONPATH": str(REPO)})
                for row in json.loads(sink.stdout.strip().splitlines()[-1]):
                    rows.append({"rate": rate or "unlimited", **row})
                    log.warning("%s %s MiB %s: %.1f ms, %d wire bytes", rate, size_mb, row["wire_dtype"],
                                row["median_s"] * 1e3, row["wire_bytes"])
            finally:
                source.stdin.close()
                source.wait(timeout=60)
    finally:
        link_down()
    for row in rows:
        native = next(r for r in rows if r["rate"] == row["rate"] and r["kv_bytes"] == row["kv_bytes"]
                      and r["wire_dtype"] == "native")
        row["time_vs_native"] = round(row["median_s"] / native["median_s"], 4)
        row["bytes_vs_native"] = round(row["wire_bytes"] / native["wire_bytes"], 4)
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Median pull time per wire dtype, bars grouped by rate and size, each labelled with its share of native."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8.0, 4.5), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    groups = list(dict.fromkeys((r["rate"], r["kv_bytes"]) for r in rows))
    wires = list(dict.fromkeys(r["wire_dtype"] for r in rows))
    width = 0.8 / len(wires)
    for index, wire in enumerate(wires):
        mine = {(r["rate"], r["kv_bytes"]): r for r in rows if r["wire_dtype"] == wire}
        positions = [g + (index - (len(wires) - 1) / 2) * width for g in range(len(groups))]
        heights = [mine[group]["median_s"] * 1e3 for group in groups]
        bars = axes.bar(positions, heights, width, label=wire)
        axes.bar_label(bars, [f"{mine[group]['time_vs_native']:.2f}" for group in groups], fontsize=7)
    axes.set_xticks(range(len(groups)))
    axes.set_xticklabels([f"{rate}\n{size / 2**20:g} MiB KV" for rate, size in groups])
    axes.set_ylabel("pull time, median (ms)")
    axes.set_yscale("log")
    axes.set_title("KV pull per wire dtype (label: time / native)")
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "serve":
        serve(int(argv[1]), int(argv[2]))
        return 0
    if argv and argv[0] == "pull":
        pull(json.loads(argv[1]), int(argv[2]), argv[3].split(","), int(argv[4]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.kv_wire_link", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="1gbit,unlimited", help="comma-separated tc rates (default 1gbit,unlimited)")
    parser.add_argument("--sizes-mb", default="16,64", help="KV MiB per pull (default 16,64)")
    parser.add_argument("--wire-dtypes", default="native,bf16,fp16,int8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None, help="also draw the figures into this PNG")
    parser.add_argument("--from-json", type=Path, default=None, help="only draw --plot from an earlier --output")
    args = parser.parse_args(argv)
    if args.from_json and args.plot:
        plot(json.loads(args.from_json.read_text())["results"], args.plot)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    rows = []
    for rate in args.rates.split(","):
        rows += measure(None if rate == "unlimited" else rate, [int(s) for s in args.sizes_mb.split(",")],
                        args.wire_dtypes.split(","), args.repeats)
    text = json.dumps({"unit": "seconds per pull (median), bytes", "command": "python -m bench.kv_wire_link "
                       + " ".join(argv), "results": rows}, indent=1)
    if args.output:
        args.output.write_text(text + "\n")
    if args.plot:
        plot(rows, args.plot)
    print(text)
    return 0 if all(r["verified"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
