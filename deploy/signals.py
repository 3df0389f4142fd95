"""A launcher's stop signals: SIGTERM stops a cluster the way Ctrl-C does, and a second signal cannot cut
the clean-up short. Signal handlers belong to the main thread: call these from it."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator


def raise_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so that one code path stops what was started."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


@contextmanager
def deferred() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM inside the block (a clean-up), then restore the handlers there were.
    Outside the main thread, where handlers cannot be set, the block runs as it is."""
    try:
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:
        previous = {}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
