"""Transactions scored while the feature store was unreachable, recorded once it answers again.

A degraded answer must not also make the transaction vanish from history: a card tested twenty times
during a Redis outage has to count twenty times in the velocity windows afterwards. Replaying is safe
because the store records each transaction_id once (a write that did land before a timeout is a no-op).

The backlog lives in the replica's memory and is bounded: a replica that dies, or an outage longer than
`max_events` transactions, loses the oldest history, and the count of what was dropped is kept.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from serve_app.features.online import OnlineStoreError, StoreEvent

logger = logging.getLogger(__name__)

Writer = Callable[[Sequence[StoreEvent]], Awaitable[object]]


class PendingWrites:
    """A bounded FIFO of unrecorded events, drained by one background task at a time."""

    def __init__(
        self, max_events: int = 50_000, chunk: int = 256, timeout_s: float = 1.0, retry_s: float = 1.0
    ) -> None:
        if max_events < 1 or chunk < 1:
            raise ValueError("max_events and chunk must be at least 1")
        self.max_events, self.chunk, self.timeout_s, self.retry_s = max_events, chunk, timeout_s, retry_s
        self.events: deque[StoreEvent] = deque()
        self.dropped = 0
        self.replayed = 0
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self.events)

    def add(self, events: Sequence[StoreEvent]) -> None:
        overflow = len(self.events) + len(events) - self.max_events
        for _ in range(max(0, min(overflow, len(self.events)))):
            self.events.popleft()  # the oldest history matters least to the windows still open
        self.dropped += max(0, overflow)
        self.events.extend(events[-self.max_events :])

    def drain_soon(self, write: Writer) -> None:
        """Start draining in the background unless a drain is already running or nothing waits."""
        if self.events and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self.drain(write))

    async def drain(self, write: Writer) -> None:
        """Write chunk after chunk until none is left; a failed chunk goes back to the front and is tried
        again `retry_s` later, so the backlog lands even when no request follows the outage."""
        failures = 0
        while self.events:
            batch = [self.events.popleft() for _ in range(min(self.chunk, len(self.events)))]
            started = time.monotonic()
            try:
                await asyncio.wait_for(write(batch), self.timeout_s)
            except (OnlineStoreError, TimeoutError) as exc:
                self.events.extendleft(reversed(batch))
                failures += 1
                if failures == 1:  # one line per outage, not one per second
                    logger.warning("%d writes wait for the store (%s)", len(self.events), type(exc).__name__)
                await asyncio.sleep(self.retry_s)
                continue
            except asyncio.CancelledError:
                self.events.extendleft(reversed(batch))  # in flight when cancelled: still unrecorded
                raise
            failures = 0
            self.replayed += len(batch)
            if self.events:
                # As long again as the chunk took: live scoring keeps at least half of the store's time
                # while a backlog of an outage lands (back to back, it made live calls wait and time out).
                await asyncio.sleep(time.monotonic() - started)
        logger.info("pending writes replayed: %d in total, %d dropped", self.replayed, self.dropped)

    async def wait(self) -> None:
        """Until the running drain (if any) has finished: for tests and orderly shutdown."""
        if self._task is not None:
            await self._task
