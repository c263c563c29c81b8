"""Durability scenarios: labels around a kill -9 of Redis, and what `appendfsync always` costs.

The embedded Redis fsyncs its append-only file before acknowledging a write (serve_app.redis_server); these
figures show that an acknowledged label survives a crash and what that policy costs, at the store (where
fsync happens) and end to end (where the graph, not Redis, is the bottleneck).
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
import uuid

import orjson
import redis

from loadtest.chaos_load import Fault, TransactionFactory, open_loop
from loadtest.chaos_scenarios import ChaosTarget, Figure, Skip, capacity
from serve_app.features.online import OnlineFeatureStore, StoreEvent


def labels_survive_kill9(target: ChaosTarget, labels: int = 400, rate: float = 80.0) -> list[Figure]:
    """Labels sent while Redis is kill -9'ed and restarted: every acknowledged one must be there after."""
    server = target.redis
    if server is None:
        raise Skip("needs a Redis this run started (kill -9 and restart)")
    factory = TransactionFactory(seed=7)
    txids: list[str] = []
    per_request = 25  # small batches: the store's per-call deadline is sized for the batching ingress
    for _ in range(labels // per_request):
        batch = [factory.payload() for _ in range(per_request)]
        request = urllib.request.Request(  # noqa: S310 - 127.0.0.1 only
            f"{target.base_url}/v1/score/batch",
            data=orjson.dumps({"transactions": batch}),
            headers={"Content-Type": "application/json", "X-API-Key": target.api_key},
        )
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            results = orjson.loads(response.read())["results"]
        txids += [r["transaction_id"] for r in results if not r["degraded"]]
    if len(txids) < labels // 2:
        return [("skipped", f"only {len(txids)} of {labels} transactions reached the store", "")]
    stamp = "2030-01-01T00:00:00Z"
    bodies = iter(
        [
            orjson.dumps({"transaction_id": t, "is_fraud": i % 2 == 0, "labelled_at": stamp})
            for i, t in enumerate(txids)
        ]
    )
    seconds = len(txids) / rate
    lock = threading.Lock()

    def next_body() -> bytes:
        with lock:
            return next(bodies)

    faults = [Fault(seconds / 3, "kill9", server.kill), Fault(seconds / 3 + 1.0, "restart", server.start)]
    run = asyncio.run(
        open_loop(
            target.base_url, target.api_key, rate, seconds, next_body, path="/v1/feedback", faults=faults
        )
    )
    acknowledged = [o.index for o in run.outcomes if o.status == 200]
    client = redis.Redis.from_url(server.url, decode_responses=True)
    stored = [client.hget(f"fraud:tx:{txids[i]}", "label") for i in acknowledged]
    client.close()
    expected = ["1" if i % 2 == 0 else "0" for i in acknowledged]
    lost = sum(1 for got, want in zip(stored, expected, strict=True) if got != want)
    return [
        ("labels sent around a kill -9 of Redis", len(run.outcomes), "labels"),
        ("acknowledged (200)", len(acknowledged), "labels"),
        ("refused while Redis was down (503)", sum(1 for o in run.outcomes if o.status == 503), "labels"),
        ("other non-200", sum(1 for o in run.outcomes if o.status not in (200, 503)), "labels"),
        ("acknowledged but missing after restart", lost, "labels"),
    ]


def store_throughput(redis_url: str, seconds: float, batch: int = 32, concurrency: int = 4) -> float:
    """Transactions/s the online store records with `concurrency` pipelined batches in flight."""
    prefix = f"chaos-fsync-{uuid.uuid4().hex[:8]}:"
    now_ms = int(time.time() * 1000)

    async def drive() -> int:
        store = OnlineFeatureStore(redis_url, timeout_s=5.0, key_prefix=prefix)
        done = 0
        deadline = time.perf_counter() + seconds

        async def worker(w: int) -> None:
            nonlocal done
            i = 0
            while time.perf_counter() < deadline:
                events = [
                    StoreEvent(
                        f"{w}-{i}-{k}", now_ms + i, f"c{(i * batch + k) % 500}", f"m{k}", 9.5, None, None
                    )
                    for k in range(batch)
                ]
                await store.fetch_and_update(events)
                done, i = done + batch, i + 1

        try:
            await asyncio.gather(*(worker(w) for w in range(concurrency)))
        finally:
            await store.aclose()
        return done

    recorded = asyncio.run(drive())
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(f"{prefix}*", count=1000):
            client.delete(key)
    finally:
        client.close()
    return recorded / seconds


def fsync_cost(target: ChaosTarget, seconds: float) -> list[Figure]:
    """appendfsync always vs everysec on the same Redis (CONFIG SET, then restored), alternated twice so
    that a busy machine's drift shows up as the spread between repeats."""
    if target.redis_url is None:
        raise Skip("needs --redis-url (or a Redis this run started)")
    client = redis.Redis.from_url(target.redis_url, decode_responses=True)
    original = str(client.config_get("appendfsync")["appendfsync"])
    store: dict[str, list[float]] = {"always": [], "everysec": []}
    graph: dict[str, list[float]] = {"always": [], "everysec": []}
    try:
        for policy in ("always", "everysec", "always", "everysec"):
            client.config_set("appendfsync", policy)
            store[policy].append(store_throughput(target.redis_url, seconds / 2))
            graph[policy].append(capacity(target, seconds)[0])
    finally:
        client.config_set("appendfsync", original)
        client.close()

    def pair(values: list[float]) -> str:
        return " / ".join(f"{v:.0f}" for v in values)

    return [
        ("store alone, appendfsync always (2 runs)", pair(store["always"]), "tx/s"),
        ("store alone, appendfsync everysec (2 runs)", pair(store["everysec"]), "tx/s"),
        ("whole graph, appendfsync always (2 runs)", pair(graph["always"]), "req/s"),
        ("whole graph, appendfsync everysec (2 runs)", pair(graph["everysec"]), "req/s"),
    ]
