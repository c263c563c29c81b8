"""`python -m loadtest.store_history`: one transaction's cost to the store as its customer's history grows.

A card hammered by a card-testing attack builds a history of thousands of events, and Redis runs one script
at a time: if a transaction's cost grew with its customer's history, that one card would slow every other
customer's call. The store keeps running sums and per-merchant sets so that it does not (online.lua). This
prints, per history length, the time of one call for that customer and for a fresh one, and Redis's memory,
against an embedded Redis started on a free port (appendfsync everysec, so the disk is not measured).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import redis
from tqdm import tqdm

from serve_app.features.online import StoreEvent, SyncOnlineFeatureStore
from serve_app.redis_server import EmbeddedRedis

FILL_BATCH = 500
SPACING_MS = 10  # the hot customer's events are this far apart, so all stay inside every window


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.store_history", description=__doc__)
    p.add_argument(
        "--lengths",
        default="10,100,1000,5000,20000",
        help="history lengths to measure at, ascending, comma-separated",
    )
    p.add_argument("--calls", type=int, default=50, help="timed calls per length and customer")
    return p.parse_args(argv)


def per_call_ms(store: SyncOnlineFeatureStore, events: Sequence[StoreEvent]) -> float:
    """Mean milliseconds of one fetch_and_update round trip, one event per call."""
    started = time.perf_counter()
    for event in events:
        store.fetch_and_update([event])
    return (time.perf_counter() - started) / len(events) * 1000.0


Row = tuple[int, float, float, float]


def measure(redis_url: str, lengths: Sequence[int], calls: int) -> list[Row]:
    """(history length, ms per call for the hot customer, ms per call for fresh customers, Redis memory
    in MiB) per length."""
    store = SyncOnlineFeatureStore(redis_url)
    info = redis.Redis.from_url(redis_url)
    now_ms = int(time.time() * 1000)
    start_ms = now_ms - lengths[-1] * SPACING_MS
    rows: list[Row] = []
    filled = 0
    with tqdm(total=lengths[-1], unit="tx", desc="filling the hot customer's history") as bar:
        for length in lengths:
            while filled < length:
                size = min(FILL_BATCH, length - filled)
                store.fetch_and_update(
                    [
                        StoreEvent(
                            f"fill-{n}", start_ms + n * SPACING_MS, "hot", f"m{n % 50}", 12.5, None, None
                        )
                        for n in range(filled, filled + size)
                    ]
                )
                filled += size
                bar.update(size)
            probe_ms = now_ms + length  # after the whole history; one millisecond apart
            hot = per_call_ms(
                store,
                [
                    StoreEvent(f"hot-{length}-{i}", probe_ms + i, "hot", "m1", 10.0, None, None)
                    for i in range(calls)
                ],
            )
            fresh = per_call_ms(
                store,
                [
                    StoreEvent(
                        f"fresh-{length}-{i}", probe_ms + i, f"fresh-{length}-{i}", "m1", 10.0, None, None
                    )
                    for i in range(calls)
                ],
            )
            filled += calls  # the hot probes joined the history too
            rows.append((length, hot, fresh, int(info.info("memory")["used_memory"]) / 2**20))
    store.close()
    info.close()
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        lengths = sorted({int(x) for x in args.lengths.split(",") if x.strip()})
    except ValueError:
        print(f"error: --lengths must be integers, got {args.lengths!r}", file=sys.stderr)
        return 2
    if not lengths or lengths[0] < 1 or args.calls < 1:
        print("error: --lengths must be positive and --calls >= 1", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="fraud-store-history-") as scratch:
        server = EmbeddedRedis(directory=Path(scratch), appendfsync="everysec").start()
        try:
            rows = measure(server.url, lengths, args.calls)
        finally:
            server.stop()
    print(
        f"\n{'history (events)':>16}  {'that customer (ms/call)':>24}  {'a new customer (ms/call)':>25}"
        f"  {'Redis memory (MiB)':>18}"
    )
    for length, hot, fresh, memory in rows:
        print(f"{length:>16}  {hot:>24.2f}  {fresh:>25.2f}  {memory:>18.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
