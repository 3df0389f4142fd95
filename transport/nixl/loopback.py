"""`disagg doctor`'s bandwidth check of the nixl transport: a NIXL READ between two agents in one child process.

Two agents with the UCX backend register a patterned source buffer and an empty target buffer (DRAM), with
one descriptor per 64 KiB block as vLLM's NixlConnector builds them; the target's agent READs the source's
blocks one warm-up and `repeats` timed times. UCX picks its transports itself (shared memory or loopback
within one process; `UCX_TLS` in the environment restricts them). `measure_in_child` runs it as
`python -m transport.nixl.loopback SIZE_BYTES REPEATS` (`transport.nixl.child`), since NIXL is native code.
"""

from __future__ import annotations

import ctypes
import os
import statistics
import sys
import time
from typing import Any

from transport.nixl import child
from transport.nixl.library import import_nixl

BACKEND = "UCX"
BLOCK_NBYTES = 64 * 1024
XFER_TIMEOUT_S = 60.0
CHILD_TIMEOUT_S = 120.0
_PATTERN = bytes(range(251))


def measure_in_child(size_bytes: int, repeats: int, timeout_s: float = CHILD_TIMEOUT_S) -> dict[str, Any]:
    """`measure` in a child process; raises `child.ChildProbeError` or subprocess.TimeoutExpired when it
    gives no answer within `timeout_s` seconds."""
    return child.run("transport.nixl.loopback", (str(size_bytes), str(repeats)), timeout_s)


def measure(size_bytes: int, repeats: int) -> dict[str, Any]:
    """READ `size_bytes` (rounded up to whole 64 KiB blocks) `repeats` + 1 times between two agents.

    Returns {"status": "ok", "gb_per_s": median of the timed READs (10^9 B/s), "size_bytes", "repeats"},
    {"status": "unavailable", "reason"} without a UCX backend, or {"status": "failed", "reason"} when the
    bytes differ. Raises ImportError without NIXL, TimeoutError or RuntimeError when a READ does not finish.
    """
    _, nixl_agent, nixl_agent_config = import_nixl()
    agents = [nixl_agent(f"disagg-doctor-{role}-{os.getpid()}", nixl_agent_config(backends=[BACKEND]))
              for role in ("source", "target")]
    if any(BACKEND not in agent.backends for agent in agents):
        return {"status": "unavailable", "reason": f"NIXL has no {BACKEND} backend here"}
    num_blocks = max(1, -(-size_bytes // BLOCK_NBYTES))
    nbytes = num_blocks * BLOCK_NBYTES
    source = bytearray((_PATTERN * (nbytes // len(_PATTERN) + 1))[:nbytes])
    target = bytearray(nbytes)
    seconds = _read_repeatedly(*agents, _address(source), _address(target), num_blocks, repeats + 1)
    if target != source:
        return {"status": "failed", "reason": "the bytes that arrived differ from those sent"}
    return {"status": "ok", "gb_per_s": round(nbytes / statistics.median(seconds[1:]) / 1e9, 3),
            "size_bytes": nbytes, "repeats": repeats}


def _address(buffer: bytearray) -> int:
    return ctypes.addressof((ctypes.c_char * len(buffer)).from_buffer(buffer))


def _read_repeatedly(source_agent: Any, target_agent: Any, source_address: int, target_address: int,
                     num_blocks: int, times: int) -> list[float]:
    """Register both buffers, READ all blocks `times` times, clean up; the seconds of each READ."""
    nbytes = num_blocks * BLOCK_NBYTES
    source_reg = source_agent.register_memory([(source_address, nbytes, 0, "")], "DRAM")
    target_reg = target_agent.register_memory([(target_address, nbytes, 0, "")], "DRAM")
    remote = target_agent.add_remote_agent(source_agent.get_agent_metadata())
    blocks = range(num_blocks)
    local = target_agent.get_xfer_descs([(target_address + b * BLOCK_NBYTES, BLOCK_NBYTES, 0) for b in blocks], "DRAM")
    far = target_agent.get_xfer_descs([(source_address + b * BLOCK_NBYTES, BLOCK_NBYTES, 0) for b in blocks], "DRAM")
    handle = target_agent.initialize_xfer("READ", local, far, remote)
    try:
        return [_read_once(target_agent, handle) for _ in range(times)]
    finally:
        target_agent.release_xfer_handle(handle)
        target_agent.remove_remote_agent(remote)
        target_agent.deregister_memory(target_reg)
        source_agent.deregister_memory(source_reg)


def _read_once(agent: Any, handle: Any) -> float:
    started_s = time.perf_counter()
    state = agent.transfer(handle)
    while state == "PROC":
        if time.perf_counter() - started_s > XFER_TIMEOUT_S:
            raise TimeoutError(f"NIXL READ not done after {XFER_TIMEOUT_S:.0f} s")
        state = agent.check_xfer_state(handle)
    if state != "DONE":
        raise RuntimeError(f"NIXL READ failed (state {state})")
    return time.perf_counter() - started_s


def main(argv: list[str]) -> int:
    """The child: measure, answer, and leave without interpreter teardown (UCX's threads can hang it)."""
    try:
        found = measure(int(argv[0]), int(argv[1]))
    except ImportError as exc:
        found = {"status": "not installed", "reason": f"NIXL does not import: {exc}"}
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        found = {"status": "unavailable", "reason": f"{type(exc).__name__}: {exc}"}
    child.answer(found)
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
