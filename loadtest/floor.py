"""The compute floor: the graph's work called directly in this process (store, models, rules), no HTTP.

What no server can beat on this machine: one pipelined Redis call plus both models, the rules and the
scoring over a batch. Transactions are validated before the clock starts (parsing is the server's cost).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import psutil

from loadtest.httpload import percentile
from loadtest.payloads import PayloadFactory
from loadtest.pipeline import InProcessScorer
from serve_app.features.online import SyncOnlineFeatureStore
from serve_app.schemas import Transaction


@dataclass(frozen=True)
class FloorRun:
    calls: int
    transactions: int
    elapsed_s: float
    p50_ms: float
    p99_ms: float
    cpu_cores: float  # this process only (Redis is measured separately by the caller)
    rss_mb: float

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def transactions_per_s(self) -> float:
        return self.transactions / self.elapsed_s if self.elapsed_s > 0 else 0.0


def make_transactions(factory: PayloadFactory, count: int) -> list[Transaction]:
    return [Transaction.model_validate(factory.transaction()) for _ in range(count)]


def run_floor(
    scorer: InProcessScorer,
    store: SyncOnlineFeatureStore,
    batches: Sequence[Sequence[Transaction]],
    max_seconds: float,
) -> FloorRun:
    """Score the batches one after another (bounded by count and by time); per-call latency percentiles."""
    if not batches:
        raise ValueError("run_floor needs at least one batch")
    me = psutil.Process()
    cpu0 = sum(me.cpu_times()[:2])
    latencies: list[float] = []
    transactions = 0
    started = time.perf_counter()
    deadline = started + max_seconds
    for batch in batches:
        t0 = time.perf_counter()
        results = scorer.score_sync(batch, store)
        latencies.append(time.perf_counter() - t0)
        if len(results) != len(batch) or any(r.degraded for r in results):
            raise RuntimeError("the compute floor scored degraded or short: is Redis up?")
        transactions += len(batch)
        if time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - started
    return FloorRun(
        calls=len(latencies),
        transactions=transactions,
        elapsed_s=elapsed,
        p50_ms=percentile(latencies, 50) * 1000.0,
        p99_ms=percentile(latencies, 99) * 1000.0,
        cpu_cores=(sum(me.cpu_times()[:2]) - cpu0) / elapsed,
        rss_mb=me.memory_info().rss / 2**20,
    )
