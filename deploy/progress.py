"""Progress while servers load: a live line on a terminal, a log line every 10 s otherwise."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)


class StartupProgress:
    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self.last_logged_s = -interval_s
        self.live = None
        if sys.stderr.isatty():
            from rich.console import Console

            self.live = Console(stderr=True).status("starting")
            self.live.start()

    def __call__(self, procs: list, ready: set[str], elapsed_s: float) -> None:
        text = " | ".join(f"{p.name}: {'ready' if p.name in ready else 'loading'}" for p in procs)
        line = f"[{elapsed_s:5.0f} s] {text}"
        if self.live is not None:
            self.live.update(line)
        elif elapsed_s - self.last_logged_s >= self.interval_s or len(ready) == len(procs):
            log.info("%s", line)
            self.last_logged_s = elapsed_s

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
