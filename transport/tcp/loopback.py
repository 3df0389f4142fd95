"""`disagg doctor`'s bandwidth check of the tcp transport: its own block server and pull client, one process.

A `BlockServer` on 127.0.0.1 (any free port) serves a patterned buffer as 64 KiB blocks; `pull_blocks` pulls
it into a second buffer one warm-up and `repeats` timed times, each over a new connection as the connector
does, through the same framing and CRC-32C. Seconds per pull are `PullResult.seconds` (connect to the last
frame checked). Both ends share this process, so the figure is the data path's, not a link's; `disagg bench
transport` measures it between two processes at several sizes.
"""

from __future__ import annotations

import statistics
from typing import Any

from transport.tcp.blocks import LayerRegion, RegionBlockStore, layout_id_of
from transport.tcp.client import pull_blocks
from transport.tcp.lease import LeaseTable
from transport.tcp.server import BlockServer
from transport.tcp.wire import PullRequest

HOST = "127.0.0.1"
BLOCK_NBYTES = 64 * 1024
LEASE_S = 60.0
TRANSFER_TIMEOUT_S = 30.0
_PATTERN = bytes(range(251))  # a prime period: a block copied to the wrong place shows


def measure(size_bytes: int, repeats: int, transfer_timeout_s: float = TRANSFER_TIMEOUT_S) -> dict[str, Any]:
    """Pull `size_bytes` (rounded up to whole 64 KiB blocks) `repeats` + 1 times over loopback.

    Returns {"status": "ok", "gb_per_s": median of the timed pulls (10^9 B/s), "size_bytes", "repeats"}, or
    {"status": "failed", "reason"} when the bytes that arrived differ. Raises OSError or the transport's
    errors (`transport.tcp.errors`) when a pull fails; `disagg doctor` reports those as unavailable.
    """
    num_blocks = max(1, -(-size_bytes // BLOCK_NBYTES))
    nbytes = num_blocks * BLOCK_NBYTES
    source = bytearray((_PATTERN * (nbytes // len(_PATTERN) + 1))[:nbytes])
    target = bytearray(nbytes)
    layout_id = layout_id_of(f"doctor loopback {BLOCK_NBYTES}")
    leases = LeaseTable()
    request_ids = [f"doctor-{index}" for index in range(repeats + 1)]
    for request_id in request_ids:
        leases.publish(request_id, range(num_blocks), LEASE_S)
    store = RegionBlockStore([LayerRegion(memoryview(source), BLOCK_NBYTES, BLOCK_NBYTES)], layout_id)
    server = BlockServer(store, leases, HOST, 0, transfer_timeout_s=transfer_timeout_s)
    port = server.start()
    try:
        views = [memoryview(target)]
        request = PullRequest(0, num_blocks, BLOCK_NBYTES, layout_id)
        seconds = [pull_blocks(HOST, port, request_id, request, views, transfer_timeout_s=transfer_timeout_s).seconds
                   for request_id in request_ids]
    finally:
        server.stop()
    if target != source:
        return {"status": "failed", "reason": "the bytes that arrived differ from those sent"}
    return {"status": "ok", "gb_per_s": round(nbytes / statistics.median(seconds[1:]) / 1e9, 3),
            "size_bytes": nbytes, "repeats": repeats}
