"""Exactly-once features: duplicates, retries after a timeout and heavy concurrency leave the store exactly
as one delivery of each transaction would, through the store and through the real graph."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import httpx
import numpy as np
import pytest
import redis

from loadtest.chaos_stack import DeployedGraph
from serve_app.features.online import KeySchema, OnlineFeatureStore, OnlineStoreError, StoreEvent
from serve_app.redis_server import EmbeddedRedis

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MINUTE_MS = 60_000


def event(txid: str, ts: int, customer: str, amount: float = 10.0, merchant: str = "m1") -> StoreEvent:
    return StoreEvent(txid, ts, customer, merchant, amount, None, None)


def state(url: str, prefix: str) -> dict[str, Any]:
    """Every key under `prefix`, with the prefix removed, so two prefixes' contents can be compared."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        snapshot: dict[str, Any] = {}
        for key in sorted(client.scan_iter(f"{prefix}*")):
            kind = client.type(key)
            value = client.zrange(key, 0, -1, withscores=True) if kind == "zset" else client.hgetall(key)
            snapshot[key.removeprefix(prefix)] = value
        return snapshot
    finally:
        client.close()


async def deliver(url: str, prefix: str, events: list[StoreEvent], timeout_s: float = 5.0) -> dict[str, Any]:
    store = OnlineFeatureStore(url, timeout_s=timeout_s, key_prefix=prefix)
    try:
        return await store.fetch_and_update(events)
    finally:
        await store.aclose()


def test_fifty_concurrent_deliveries_on_fifty_connections_equal_one(redis_url: str) -> None:
    history = [event(f"h{i}", T0 + i * MINUTE_MS, "c1", amount=1.5 * (i + 1)) for i in range(5)]
    duplicate = event("dup", T0 + 10 * MINUTE_MS, "c1", amount=99.25)
    later = event("later", T0 + 20 * MINUTE_MS, "c1")

    async def scenario(prefix: str, copies: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        await deliver(redis_url, prefix, history)
        answers = await asyncio.gather(*(deliver(redis_url, prefix, [duplicate]) for _ in range(copies)))
        probe = await deliver(redis_url, prefix, [later])
        return list(answers), probe

    once_answers, once_probe = asyncio.run(scenario("once:", 1))
    many_answers, many_probe = asyncio.run(scenario("many:", 50))
    assert state(redis_url, "once:") == state(redis_url, "many:")
    for answer in many_answers:
        for name, column in once_answers[0].items():
            np.testing.assert_array_equal(answer[name], column, err_msg=name)
    assert many_probe["cust_count_1h"][0] == 6  # five history events + the duplicate, counted once
    assert many_probe["cust_sum_1h"][0] == sum(e.amount for e in history) + duplicate.amount
    for name, column in once_probe.items():
        np.testing.assert_array_equal(many_probe[name], column, err_msg=name)


def test_a_timeout_after_the_write_landed_then_a_retry_counts_once(
    redis_server: EmbeddedRedis, redis_url: str
) -> None:
    """The client gives up while Redis is busy; its command still runs afterwards; the retry is a no-op."""
    keys = KeySchema("fraud:")
    tx = event("late-ack", T0, "c-timeout", amount=12.5)
    blocker = redis.Redis.from_url(redis_url)

    async def attempt() -> None:
        store = OnlineFeatureStore(redis_url, timeout_s=0.05)
        try:
            # A warm connection with the script loaded, so the next call's command is on the wire at once.
            await store.fetch_and_update([event("warm-up", T0, "c-other")])
            await asyncio.to_thread(sleeping.start)
            await asyncio.sleep(0.1)  # DEBUG SLEEP is now blocking the server
            await store.fetch_and_update([tx])
        finally:
            await store.aclose()

    sleeping = threading.Thread(target=lambda: blocker.execute_command("DEBUG", "SLEEP", "0.6"))
    with pytest.raises(OnlineStoreError):
        asyncio.run(attempt())
    sleeping.join()
    blocker.close()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    deadline = time.monotonic() + 5
    while not client.exists(keys.transaction(tx.transaction_id)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.exists(keys.transaction(tx.transaction_id)), "the timed-out write never landed"
    before_retry = state(redis_url, "fraud:")
    asyncio.run(deliver(redis_url, "fraud:", [tx]))
    assert state(redis_url, "fraud:") == before_retry
    assert client.zcard(keys.customer("c-timeout")) == 1
    client.close()


def test_a_thousand_concurrent_transactions_of_one_customer_lose_no_update(redis_url: str) -> None:
    events = [event(f"burst-{i}", T0 + i * 1000, "c-burst", amount=0.25 * (i % 40 + 1)) for i in range(1000)]
    chunks = [events[i::40] for i in range(40)]  # 40 clients, each with its own connection and order

    async def burst() -> dict[str, Any]:
        await asyncio.gather(*(deliver(redis_url, "fraud:", [e]) for chunk in chunks for e in chunk[:5]))
        await asyncio.gather(*(deliver(redis_url, "fraud:", chunk) for chunk in chunks))
        return await deliver(redis_url, "fraud:", [event("probe", T0 + 2000 * 1000, "c-burst")])

    probe = asyncio.run(burst())
    assert probe["cust_count_1h"][0] == 1000
    assert probe["cust_sum_1h"][0] == pytest.approx(sum(e.amount for e in events), abs=1e-9)
    client = redis.Redis.from_url(redis_url)
    assert client.zcard(KeySchema("fraud:").customer("c-burst")) == 1001
    client.close()


# ---- through the real graph ------------------------------------------------------------------------


def tx_payload(txid: str, customer: str, minute: int, amount: float) -> dict[str, Any]:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 / 1000 + minute * 60))
    return {
        "transaction_id": txid,
        "timestamp": stamp,
        "customer_id": customer,
        "merchant_id": "m-api",
        "amount": amount,
    }


async def post_all(
    graph: DeployedGraph, payloads: list[dict[str, Any]], connections: int
) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"X-API-Key": graph.api_key}
    async with httpx.AsyncClient(
        base_url=graph.base_url, headers=headers, timeout=60, limits=limits
    ) as client:
        return await asyncio.gather(*(client.post("/v1/score", json=p) for p in payloads))


def customer_history(graph: DeployedGraph, customer: str) -> list[tuple[str, float]]:
    """The customer's history zset as (member, event time) pairs."""
    client = redis.Redis.from_url(graph.redis_url, decode_responses=True)
    try:
        rows: list[Any] = client.zrange(KeySchema("fraud:").customer(customer), 0, -1, withscores=True)
        return [(str(member), float(score)) for member, score in rows]
    finally:
        client.close()


def wait_for_history(graph: DeployedGraph, customer: str, expected: int, timeout_s: float = 20.0) -> int:
    """Degraded answers' writes are replayed once the store answers again: give them a moment."""
    deadline = time.monotonic() + timeout_s
    count = len(customer_history(graph, customer))
    while count < expected and time.monotonic() < deadline:
        time.sleep(0.2)
        count = len(customer_history(graph, customer))
    return count


def test_fifty_concurrent_api_deliveries_count_once(graph: DeployedGraph) -> None:
    customer = f"c-api-{uuid.uuid4().hex[:8]}"
    history = [tx_payload(f"{customer}-h{i}", customer, i, 5.0 + i) for i in range(3)]
    assert all(r.status_code == 200 for r in asyncio.run(post_all(graph, history, 1)))
    duplicate = tx_payload(f"{customer}-dup", customer, 10, 77.0)
    responses = asyncio.run(post_all(graph, [duplicate] * 50, 50))
    # A 503 with Retry-After was refused before scoring (Serve's backpressure): a client sends it again,
    # and the resends are deliveries of the same transaction too, so they must count zero times as well.
    shed = [r for r in responses if r.status_code == 503 and r.headers.get("retry-after")]
    if shed:
        time.sleep(float(shed[0].headers["retry-after"]))
        responses = [r for r in responses if r not in shed]
        responses += asyncio.run(post_all(graph, [duplicate] * len(shed), len(shed)))
    refused = [(r.status_code, r.text[:200]) for r in responses if r.status_code != 200]
    assert not refused, refused
    assert len(responses) == 50
    stored = [r.json() for r in responses if not r.json()["degraded"]]
    assert stored, "every answer was degraded: the store never took the transaction"
    assert all(answer == stored[0] for answer in stored)  # the store's first answer, replayed to every copy
    assert wait_for_history(graph, customer, 4) == 4
    assert len(customer_history(graph, customer)) == 4  # and never more, however long one waits


def test_a_thousand_concurrent_api_transactions_of_one_customer_lose_no_update(graph: DeployedGraph) -> None:
    """Twenty batch requests of fifty at once (one request each would take minutes on a busy CI machine)."""
    customer = f"c-api-{uuid.uuid4().hex[:8]}"
    payloads = [tx_payload(f"{customer}-{i}", customer, i, 1.0 + i % 7) for i in range(1000)]
    batches = [payloads[i::20] for i in range(20)]
    limits = httpx.Limits(max_connections=20, max_keepalive_connections=20)

    async def send() -> list[httpx.Response]:
        headers = {"X-API-Key": graph.api_key}
        async with httpx.AsyncClient(
            base_url=graph.base_url, headers=headers, timeout=120, limits=limits
        ) as c:
            return await asyncio.gather(
                *(c.post("/v1/score/batch", json={"transactions": b}) for b in batches)
            )

    responses = asyncio.run(send())
    assert [r.status_code for r in responses] == [200] * 20
    assert wait_for_history(graph, customer, 1000) == 1000
    total = sum(float(member.split("|")[2]) for member, _ in customer_history(graph, customer))
    assert total == pytest.approx(sum(p["amount"] for p in payloads), abs=1e-9)
