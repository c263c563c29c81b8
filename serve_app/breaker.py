"""A small circuit breaker: after repeated failures, stop calling a dependency for a while, then probe it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

State = Literal["closed", "open", "half_open"]


@dataclass
class CircuitBreaker:
    """Closed: calls pass. `failure_threshold` failures in a row open it for `reset_after_s`; then one
    probe call is let through (half-open): success closes it, failure opens it again.

    Not thread-safe by design: a Serve replica runs its async handlers on one event loop.
    """

    failure_threshold: int = 3
    reset_after_s: float = 2.0
    clock: Callable[[], float] = time.monotonic
    state: State = field(default="closed", init=False)
    consecutive_failures: int = field(default=0, init=False)
    opened_at: float = field(default=0.0, init=False)
    probe_in_flight: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {self.failure_threshold}")
        if self.reset_after_s <= 0:
            raise ValueError(f"reset_after_s must be > 0, got {self.reset_after_s}")

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

    def record_success(self) -> None:
        self.state = "closed"
        self.consecutive_failures = 0
        self.probe_in_flight = False

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        self.probe_in_flight = False
        if self.state == "half_open" or self.consecutive_failures >= self.failure_threshold:
            self.state = "open"
            self.opened_at = self.clock()
