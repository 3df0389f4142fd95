"""A circuit breaker: after a failed tier operation, skip the tier for a cool-down, then try it again.

Closed (the tier is used) → a failure opens it → `allow()` is False until `cooldown_s` has passed → then one
trial is allowed (half-open): its success closes the breaker, its failure opens it for another cool-down.
Requests never wait for a tier that is down: while open they are computed as if the tier had missed.
Not thread-safe by itself: each side of the connector owns one, used from one thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class CircuitBreaker:
    def __init__(self, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._opened_at_s: float | None = None
        self._trial = False
        self.openings = 0  # how many times it opened (for logs)

    @property
    def state(self) -> str:
        if self._opened_at_s is None:
            return CLOSED
        return HALF_OPEN if self._trial else OPEN

    def ready(self) -> bool:
        """Whether `allow()` would say yes now (no state change)."""
        return self._opened_at_s is None or self._clock() - self._opened_at_s >= self.cooldown_s

    def allow(self) -> bool:
        """Whether to use the tier now (closed, or the one trial after the cool-down)."""
        if self._opened_at_s is None:
            return True
        now_s = self._clock()
        if now_s - self._opened_at_s < self.cooldown_s:
            return False  # open; or a trial under way whose result is not recorded yet
        self._opened_at_s, self._trial = now_s, True  # a lost trial result allows another one a cool-down later
        return True

    def record_success(self) -> None:
        self._opened_at_s, self._trial = None, False

    def record_failure(self) -> None:
        """Open (again) from now on; returns nothing, `state` says OPEN."""
        if self._opened_at_s is None or self._trial:
            self.openings += 1
        self._opened_at_s, self._trial = self._clock(), False
