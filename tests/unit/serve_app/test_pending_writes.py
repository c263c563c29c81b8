"""The backlog of transactions scored while the store was down: bounded, ordered, never lost on a failed
replay, and drained by one task at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from serve_app.features.online import OnlineStoreError, StoreEvent
from serve_app.pending_writes import PendingWrites


def events(n: int, start: int = 0) -> list[StoreEvent]:
    return [StoreEvent(f"t{i}", 1_000 * i, "c", "m", 1.0, None, None) for i in range(start, start + n)]


class Store:
    """Records what it was asked to write; its first `failures` calls fail (a stand-in for Redis' answers)."""

    def __init__(self, failures: int = 0) -> None:
        self.written: list[str] = []
        self.failures = failures
        self.calls = 0

    async def write(self, batch: Sequence[StoreEvent]) -> None:
        self.calls += 1
        await asyncio.sleep(0)
        if self.calls <= self.failures:
            raise OnlineStoreError("down")
        self.written += [e.transaction_id for e in batch]


def test_drain_writes_everything_in_order_in_chunks() -> None:
    pending, store = PendingWrites(chunk=3), Store()
    pending.add(events(7))
    asyncio.run(pending.drain(store.write))
    assert store.written == [f"t{i}" for i in range(7)]
    assert store.calls == 3
    assert len(pending) == 0
    assert pending.replayed == 7


def test_a_failed_chunk_goes_back_to_the_front_and_is_retried_until_it_lands() -> None:
    pending, store = PendingWrites(chunk=2, retry_s=0.001), Store(failures=3)
    pending.add(events(5))
    asyncio.run(pending.drain(store.write))
    assert store.written == [f"t{i}" for i in range(5)]  # nothing lost, nothing twice, order kept
    assert store.calls == 3 + 3
    assert len(pending) == 0


@pytest.mark.parametrize(("first", "second", "limit"), [(3, 4, 5), (0, 9, 5), (5, 0, 5), (2, 2, 5)])
def test_the_backlog_is_bounded_and_drops_the_oldest(first: int, second: int, limit: int) -> None:
    pending = PendingWrites(max_events=limit)
    pending.add(events(first))
    pending.add(events(second, start=first))
    total = first + second
    kept = [e.transaction_id for e in pending.events]
    assert kept == [f"t{i}" for i in range(max(0, total - limit), total)]
    assert pending.dropped == max(0, total - limit)


def test_drain_soon_runs_one_drain_at_a_time() -> None:
    async def scenario() -> Store:
        pending, store = PendingWrites(chunk=1), Store()
        pending.add(events(4))
        pending.drain_soon(store.write)
        pending.drain_soon(store.write)  # a drain is running: no second one
        await pending.wait()
        pending.drain_soon(store.write)  # nothing left: no task
        await pending.wait()
        return store

    store = asyncio.run(scenario())
    assert store.written == ["t0", "t1", "t2", "t3"]
    assert store.calls == 4


def test_a_hanging_store_times_out_and_keeps_the_events() -> None:
    async def hang(_batch: Sequence[StoreEvent]) -> None:
        await asyncio.sleep(10)

    async def scenario(pending: PendingWrites) -> None:
        pending.drain_soon(hang)
        await asyncio.sleep(0.1)  # several timed-out attempts

    pending = PendingWrites(timeout_s=0.01, retry_s=0.01)
    pending.add(events(3))
    asyncio.run(scenario(pending))
    assert [e.transaction_id for e in pending.events] == ["t0", "t1", "t2"]
