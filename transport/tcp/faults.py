"""Fault injection for tests, OFF unless the prefill node's environment sets `DISAGG_TCP_FAULT_FILE`.

Test-only: it exists so integration tests can prove that a corrupted or cut transfer is detected and
recomputed, never decoded from. Before each pull the block server reads the file named there (a missing
or empty file means no fault). Its content, whitespace-separated:

    corrupt         every pull: one byte of the first DATA frame's payload is flipped AFTER its CRC-32C
                    was computed (the decode side must detect it; the KV memory itself is not touched)
    truncate        every pull: the server sends half the data bytes, then closes the connection
    stall           every pull: the server sends half the data bytes, then nothing, until the decode side
                    gives up (its transfer timeout) or the server's own deadline passes
    corrupt once    the same, for the next pull only: the server empties the file when it takes the fault
    truncate once   (and `stall once`)

Anything else is logged and ignored. Every injected fault is logged as a warning.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

FAULT_FILE_ENV = "DISAGG_TCP_FAULT_FILE"


class Fault(enum.Enum):
    CORRUPT = "corrupt"
    TRUNCATE = "truncate"
    STALL = "stall"


class FaultFile:
    """The fault file of one block server; `take()` is called once per pull."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()  # concurrent pulls: a `once` fault goes to exactly one

    def take(self) -> Fault | None:
        """The fault for the pull about to be served, or None; a `once` fault empties the file."""
        with self._lock:
            try:
                words = self.path.read_text().split()
            except FileNotFoundError:
                return None
            except (OSError, UnicodeDecodeError) as exc:
                logger.warning("fault file %s unreadable, no fault injected: %s", self.path, exc)
                return None
            if not words:
                return None
            fault = _parse(words)
            if fault is None:
                logger.warning("fault file %s: %r is not 'corrupt|truncate|stall [once]'; ignored", self.path, words)
                return None
            if len(words) == 2:
                self.path.write_text("")
        logger.warning("FAULT INJECTION (%s=%s): %s this pull", FAULT_FILE_ENV, self.path, fault.value)
        return fault


def _parse(words: list[str]) -> Fault | None:
    if len(words) > 2 or (len(words) == 2 and words[1] != "once"):
        return None
    try:
        return Fault(words[0])
    except ValueError:
        return None


def corrupted(pieces: Sequence[memoryview]) -> list[memoryview | bytes]:
    """The same bytes with the first one flipped, in a copy (the KV memory is left as it is)."""
    first = bytearray(pieces[0])
    first[0] ^= 0xFF
    return [bytes(first), *pieces[1:]]


def cut(pieces: Sequence[memoryview], nbytes: int) -> list[memoryview]:
    """The first `nbytes` bytes of `pieces`."""
    kept = []
    for piece in pieces:
        if nbytes <= 0:
            break
        kept.append(piece[:nbytes])
        nbytes -= len(kept[-1])
    return kept
