"""NIXL probes run in a child process (`python -m <module>`), so that a native crash or a missing library
costs one probe, not the caller: the child prints one line, `MARKER` and a JSON object (NIXL prints its own
log lines on stdout too); the parent takes the last such line."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MARKER = "DISAGG-NATIVE-PROBE "
_ROOT = Path(__file__).resolve().parents[2]  # where `transport` is importable from


class ChildProbeError(RuntimeError):
    """The child printed no answer (it crashed, or could not import what it runs)."""


def run(module: str, args: Sequence[str] = (), timeout_s: float = 180.0) -> dict[str, Any]:
    """The JSON object `python -m module *args` answered with.

    Raises ChildProbeError ("probe process exited with CODE: last stderr line") when it answered nothing, and
    subprocess.TimeoutExpired after `timeout_s` seconds.
    """
    done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=timeout_s, cwd=_ROOT)
    lines = [line[len(MARKER):] for line in done.stdout.splitlines() if line.startswith(MARKER)]
    if not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ChildProbeError(f"probe process exited with {done.returncode}: {tail}")
    return json.loads(lines[-1])


def answer(found: dict[str, Any]) -> None:
    """The child's side: print `found` after the marker."""
    sys.stdout.write(MARKER + json.dumps(found) + "\n")
    sys.stdout.flush()
