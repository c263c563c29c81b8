"""A small circuit breaker: after repeated failures or slow calls, stop calling a dependency; then probe."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

State = Literal["closed", "open", "half_open"]


@dataclass
class CircuitBreaker:
    """Closed: calls pass. `failure_threshold` failures in a row open it for `reset_after_s`; then one
    probe call is let through (half-open): success closes it, failure opens it again.

    Slow answers count too: a dependency that answers, but late, holds every caller as long as it is
    late (and, behind the edge, every in-flight slot). With `slow_call_s` set, when at least
    `slow_share` of the last `window` calls failed or took longer than `slow_call_s`, it opens as well.

    Not thread-safe by design: a Serve replica runs its async handlers on one event loop.
    """

    failure_threshold: int = 3
    reset_after_s: float = 2.0
    clock: Callable[[], float] = time.monotonic
    slow_call_s: float | None = None
    slow_share: float = 0.5
    window: int = 10
    state: State = field(default="closed", init=False)
    consecutive_failures: int = field(default=0, init=False)
    opened_at: float = field(default=0.0, init=False)
    probe_in_flight: bool = field(default=False, init=False)
    recent: deque[bool] = field(init=False)  # True: that call failed or was slow

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {self.failure_threshold}")
        if self.reset_after_s <= 0:
            raise ValueError(f"reset_after_s must be > 0, got {self.reset_after_s}")
        if not 0 < self.slow_share <= 1 or self.window < 1:
            raise ValueError(f"need 0 < slow_share <= 1, window >= 1; got {self.slow_share}, {self.window}")
        self.recent = deque(maxlen=self.window)

    def allow(self) -> bool:
        """May the caller try the dependency now? In half-open state only one probe at a time may."""
        if self.state == "closed":
            return True
        if self.state == "open":
            if self.clock() - self.opened_at < self.reset_after_s:
                return False
            self.state = "half_open"
            self.probe_in_flight = False
        if self.probe_in_flight:
            return False
        self.probe_in_flight = True
        return True

    def record_success(self, elapsed_s: float = 0.0) -> None:
        """The call answered; after `elapsed_s` seconds (its answer is used even when it was slow)."""
        slow = self.slow_call_s is not None and elapsed_s > self.slow_call_s
        if slow and self.state == "half_open":
            self._open()  # the probe came back late: the dependency has not recovered
            return
        if self.state == "half_open":
            self.recent.clear()  # a fresh start: the calls that opened it say nothing about now
        self.state = "closed"
        self.consecutive_failures = 0
        self.probe_in_flight = False
        self.recent.append(slow)
        if slow and self._mostly_bad():
            self._open()

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        self.recent.append(True)
        if (
            self.state == "half_open"
            or self.consecutive_failures >= self.failure_threshold
            or self._mostly_bad()
        ):
            self._open()
        self.probe_in_flight = False

    def _mostly_bad(self) -> bool:
        if self.slow_call_s is None or len(self.recent) < self.window:
            return False
        return sum(self.recent) >= self.slow_share * self.window

    def _open(self) -> None:
        self.state = "open"
        self.opened_at = self.clock()
        self.probe_in_flight = False
