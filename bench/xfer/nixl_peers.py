"""Benchmark peers over NIXL: a READ of KV blocks from one agent's DRAM into another's, UCX backend.

The source agent registers its buffer and hands its agent metadata (NIXL's own bytes, base64 in JSON) and
the buffer's address to the sink through the parent; the sink registers its buffer, loads the metadata,
builds one descriptor per KV block per layer on each side (as vLLM's NixlConnector does), and posts the
READ, polling until it is done. UCX picks its transports itself (shared memory or CMA on one host) unless
the process environment restricts them, e.g. `UCX_TLS=tcp`. NIXL itself is imported through
`transport.nixl.library.import_nixl`, inside the peers' constructors.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from typing import Any

import numpy as np

from bench.xfer.buffers import (
    block_descriptors,
    buffer_address,
    empty_buffer,
    holds_pattern,
    layout_for,
    pattern_buffer,
)
from transport.nixl.library import import_nixl

logger = logging.getLogger(__name__)

BACKEND = "UCX"
XFER_TIMEOUT_S = 120.0


def _new_agent(role: str) -> Any:
    """A NIXL agent with the UCX backend; raises if NIXL or its UCX plugin is missing."""
    _, nixl_agent, nixl_agent_config = import_nixl()
    agent = nixl_agent(f"disagg-bench-{role}-{os.getpid()}", nixl_agent_config(backends=[BACKEND]))
    if BACKEND not in agent.backends:
        raise RuntimeError(f"NIXL has no {BACKEND} backend here (plugins: {agent.get_plugin_list()})")
    return agent


def _register(agent: Any, buffer: np.ndarray) -> Any:
    return agent.register_memory([(buffer_address(buffer), buffer.nbytes, 0, "")], "DRAM")


class NixlSource:
    """Holds the buffer, registered with its agent, for the sink to READ."""

    def __init__(self) -> None:
        self._agent = _new_agent("source")
        self._buffer: np.ndarray | None = None
        self._registration: Any = None

    def prepare(self, size_bytes: int, transfers: int) -> dict[str, Any]:
        del transfers  # a READ needs nothing from this side per transfer
        self._buffer = pattern_buffer(size_bytes)
        self._registration = _register(self._agent, self._buffer)
        metadata = self._agent.get_agent_metadata()
        return {"metadata_b64": base64.b64encode(metadata).decode(), "address": buffer_address(self._buffer)}

    def release(self) -> dict[str, Any]:
        if self._registration is not None:
            self._agent.deregister_memory(self._registration)
        self._buffer, self._registration = None, None
        return {}

    def close(self) -> None:
        self.release()


class NixlSink:
    """READs the source's blocks into its own registered buffer."""

    def __init__(self) -> None:
        self._agent = _new_agent("sink")

    def pull(self, endpoint: dict[str, Any], size_bytes: int, repeats: int) -> dict[str, Any]:
        layout = layout_for(size_bytes)
        buffer = empty_buffer(size_bytes)
        registration = _register(self._agent, buffer)
        remote = self._agent.add_remote_agent(base64.b64decode(endpoint["metadata_b64"]))
        try:
            local_descs = self._agent.get_xfer_descs(block_descriptors(buffer_address(buffer), layout), "DRAM")
            remote_descs = self._agent.get_xfer_descs(block_descriptors(endpoint["address"], layout), "DRAM")
            handle = self._agent.initialize_xfer("READ", local_descs, remote_descs, remote)
            try:
                seconds = [self._read_once(handle) for _ in range(repeats + 1)]
            finally:
                self._agent.release_xfer_handle(handle)
        finally:
            self._agent.remove_remote_agent(remote)
            self._agent.deregister_memory(registration)
        return {"seconds": seconds[1:], "verified": holds_pattern(buffer)}

    def _read_once(self, handle: Any) -> float:
        """Post the READ and poll it to completion; the seconds it took."""
        started_s = time.perf_counter()
        deadline_s = started_s + XFER_TIMEOUT_S
        state = self._agent.transfer(handle)
        while state == "PROC":
            if time.perf_counter() > deadline_s:
                raise TimeoutError(f"NIXL READ not done after {XFER_TIMEOUT_S:.0f} s")
            state = self._agent.check_xfer_state(handle)
        if state != "DONE":
            raise RuntimeError(f"NIXL READ failed (state {state})")
        return time.perf_counter() - started_s
