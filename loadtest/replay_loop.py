"""The replay's send loop: scoring batches and labels in flight, in an order equal to a sequential replay."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm import tqdm

from loadtest.replay_http import Payload, ReplayClient, ScoredRow, TransactionPayloads, retry_delays
from loadtest.replay_schedule import (
    Bounds,
    Entities,
    LabelFeed,
    ReplayStream,
    batches_conflict,
    label_release_counts,
    plan_batches,
)
from serve_app.schemas import MAX_BATCH


@dataclass
class ReplayResult:
    """Scores in replay order plus what the run cost."""

    scores: pd.DataFrame  # transaction_id, fraud_probability, decision, degraded
    elapsed_s: float
    batches: int
    label_statuses: Counter[str]
    retries: int  # HTTP requests repeated after a transport error or a 408/429/502/503/504
    resent_degraded: int  # batches sent again because the store could not serve them the first time


async def _send_labels(client: ReplayClient, labels: list[Payload], statuses: Counter[str]) -> None:
    chunks = [labels[i : i + MAX_BATCH] for i in range(0, len(labels), MAX_BATCH)]
    for counts in await asyncio.gather(*(client.feedback(chunk) for chunk in chunks)):
        statuses.update(counts)


class _Replayer:
    """The send loop's state: scoring batches in flight and genuine labels on their way in the background."""

    def __init__(
        self,
        stream: ReplayStream,
        client: ReplayClient,
        bounds: Bounds,
        concurrency: int,
        degraded_retries: int,
        progress: bool,
    ) -> None:
        self.stream, self.client, self.bounds, self.concurrency = stream, client, bounds, concurrency
        self.degraded_pauses = retry_delays(degraded_retries + 1, 0.25)
        self.resent_degraded = 0
        self.customers = stream.frame["customer_id"].astype(str).to_numpy()
        self.merchants = stream.frame["merchant_id"].astype(str).to_numpy()
        self.scored = np.zeros(len(bounds), dtype=bool)
        self.rows: list[ScoredRow | None] = [None] * len(stream.frame)
        self.statuses: Counter[str] = Counter()
        self.in_flight: dict[asyncio.Task[list[ScoredRow]], tuple[int, Entities]] = {}
        self.background: list[asyncio.Task[None]] = []
        self.bar = tqdm(total=len(stream.frame), unit="tx", disable=not progress, smoothing=0.05)

    def entities(self, start: int, stop: int) -> Entities:
        if self.concurrency == 1:
            return frozenset(), frozenset()  # never compared: one batch in flight at a time
        return frozenset(self.customers[start:stop]), frozenset(self.merchants[start:stop])

    async def settle(self, wait_for: set[asyncio.Task[list[ScoredRow]]]) -> None:
        done, _ = await asyncio.wait(wait_for, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            index, _ = self.in_flight.pop(task)
            start, stop = self.bounds[index]
            self.rows[start:stop] = task.result()
            self.scored[index] = True
            self.bar.update(stop - start)

    async def make_room_for(self, entities: Entities) -> None:
        """Wait until the next batch may go: under the concurrency cap, sharing no id with any in flight."""
        while self.in_flight:
            if self.concurrency == 1 or len(self.in_flight) >= self.concurrency:
                blocking = set(self.in_flight)
            else:
                blocking = {
                    t for t, (_, other) in self.in_flight.items() if batches_conflict(entities, other)
                }
            if not blocking:
                return
            await self.settle(blocking)

    async def send_labels(self, labels: list[Payload]) -> None:
        """Fraud labels before the next batch (they change features); genuine ones in the background.

        A genuine verdict on a transaction never labelled fraud changes no feature (the store only drops
        the id from label sets it is not in), so it need not hold up scoring: one round trip per batch
        instead of two on the critical path."""
        fraud = [label for label in labels if label["is_fraud"]]
        genuine = [label for label in labels if not label["is_fraud"]]
        if genuine:
            self.background.append(asyncio.create_task(_send_labels(self.client, genuine, self.statuses)))
            while len(self.background) > self.concurrency:
                await self.background.pop(0)
        if fraud:
            await _send_labels(self.client, fraud, self.statuses)

    async def score(self, payloads: list[Payload]) -> list[ScoredRow]:
        """A batch's answers; a batch the store could not serve (degraded rows) is sent again.

        Safe and exact because the store is idempotent by transaction_id: rows it recorded the first time
        answer with the aggregates stored then, the others are recorded now, and no later batch touching
        the same customers or merchants has been sent in between."""
        for pause in self.degraded_pauses:
            rows = await self.client.score(payloads)
            if not any(row.degraded for row in rows):
                return rows
            self.resent_degraded += 1
            await asyncio.sleep(pause)  # the fetcher's circuit breaker needs a moment to close again
        return await self.client.score(payloads)

    def start(self, index: int, payloads: list[Payload], entities: Entities) -> None:
        self.in_flight[asyncio.create_task(self.score(payloads))] = (index, entities)

    async def drain(self) -> None:
        while self.in_flight:
            await self.settle(set(self.in_flight))
        for task in self.background:
            await task
        self.background.clear()

    def cancel(self) -> None:
        for task in [*self.in_flight, *self.background]:
            task.cancel()

    def scores(self) -> pd.DataFrame:
        done = [r for r in self.rows if r is not None]
        return pd.DataFrame(
            {
                "transaction_id": [r.transaction_id for r in done],
                "fraud_probability": [r.fraud_probability for r in done],
                "decision": [r.decision for r in done],
                "degraded": [r.degraded for r in done],
            }
        )


async def run_replay(
    stream: ReplayStream,
    client: ReplayClient,
    *,
    batch_size: int,
    label_delay_ms: int,
    concurrency: int = 1,
    degraded_retries: int = 4,
    progress: bool = True,
) -> ReplayResult:
    """Sends every batch and every due label, in an order that gives the sequential replay's answers."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    bounds = plan_batches(stream.ts_ms, min(batch_size, MAX_BATCH), label_delay_ms)
    release = label_release_counts(stream.labelled_at_ms, bounds, stream.ts_ms)
    row_batch = np.repeat(np.arange(len(bounds)), [stop - start for start, stop in bounds]).astype(np.int64)
    feed = LabelFeed(stream, row_batch)
    payloads = TransactionPayloads(stream.frame, stream.ts_ms)
    replayer = _Replayer(stream, client, bounds, concurrency, degraded_retries, progress)
    started = time.perf_counter()
    try:
        for index, (start, stop) in enumerate(bounds):
            body = payloads.batch(start, stop)  # built while earlier batches are still in flight
            entities = replayer.entities(start, stop)
            await replayer.make_room_for(entities)
            await replayer.send_labels(feed.take(int(release[index]), replayer.scored))
            replayer.start(index, body, entities)
        await replayer.drain()
        # Replay time has reached its end: labels due by then and those held back go out too.
        await replayer.send_labels(feed.take(len(stream.label_ids), replayer.scored))
        await replayer.drain()
    finally:
        replayer.cancel()
        replayer.bar.close()
    elapsed = time.perf_counter() - started
    return ReplayResult(
        replayer.scores(), elapsed, len(bounds), replayer.statuses, client.retries, replayer.resent_degraded
    )
