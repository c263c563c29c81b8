"""The Redis online store against a real redis-server: idempotency, concurrency, TTLs, event time, labels."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

import numpy as np
import pandas as pd
import pytest
import redis

from serve_app.features.contract import DAY_MS, HOUR_MS, RAW_NAMES
from serve_app.features.offline import compute_raw_aggregates
from serve_app.features.online import (
    KEY_TTL_MS,
    KeyedLabel,
    LabelEvent,
    OnlineFeatureStore,
    OnlineStoreError,
    StoreEvent,
    SyncOnlineFeatureStore,
)
from serve_app.redis_server import free_port
from serve_app.schemas import Transaction

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
T = TypeVar("T")


def run(make: Callable[[OnlineFeatureStore], Awaitable[T]], url: str) -> T:
    """One event loop and one store per call, as a serving replica has."""

    async def go() -> T:
        store = OnlineFeatureStore(url, timeout_s=2.0)
        try:
            return await make(store)
        finally:
            await store.aclose()

    return asyncio.run(go())


def event(txid: str, ts: int, customer: str = "c1", merchant: str = "m1", amount: float = 10.0) -> StoreEvent:
    return StoreEvent(txid, ts, customer, merchant, amount, None, None)


def row(raw: dict[str, np.ndarray], i: int = 0) -> dict[str, float | None]:
    """One event's aggregates; NaN ("no such event") as None so that answers compare with ==."""
    return {name: None if math.isnan(v := float(raw[name][i])) else v for name in RAW_NAMES}


def snapshot(url: str) -> dict[str, object]:
    """Every key's content (zset members with scores, hash fields): what 'changes nothing' compares."""
    client = redis.Redis.from_url(url, decode_responses=True)
    state: dict[str, object] = {}
    for key in sorted(client.scan_iter("*")):
        kind = client.type(key)
        state[key] = client.zrange(key, 0, -1, withscores=True) if kind == "zset" else client.hgetall(key)
    client.close()
    return state


def test_a_retried_transaction_gets_the_same_answer_and_changes_nothing(redis_url: str) -> None:
    history = [event("a", T0), event("b", T0 + 60_000, amount=5.5)]
    retried = event("c", T0 + 120_000, amount=1.25)

    async def first(store: OnlineFeatureStore) -> dict[str, np.ndarray]:
        await store.fetch_and_update(history)
        return await store.fetch_and_update([retried])

    answer = row(run(first, redis_url))
    assert answer["cust_count_1h"] == 2
    assert answer["cust_sum_1h"] == 15.5
    before = snapshot(redis_url)
    again = row(run(lambda s: s.fetch_and_update([retried, retried]), redis_url))
    both = run(lambda s: s.fetch_and_update([retried, retried]), redis_url)
    assert again == answer
    assert row(both, 0) == row(both, 1) == answer
    assert snapshot(redis_url) == before


def test_fifty_concurrent_deliveries_of_one_transaction_count_once(redis_url: str) -> None:
    tx = event("dup", T0, amount=42.0)

    async def deliver_concurrently() -> list[dict[str, np.ndarray]]:
        stores = [OnlineFeatureStore(redis_url, timeout_s=5.0) for _ in range(50)]  # 50 connections
        try:
            return await asyncio.gather(*(s.fetch_and_update([tx]) for s in stores))
        finally:
            await asyncio.gather(*(s.aclose() for s in stores))

    answers = [row(a) for a in asyncio.run(deliver_concurrently())]
    assert all(a == answers[0] for a in answers)
    after = row(run(lambda s: s.fetch_and_update([event("next", T0 + 1000, customer="c1")]), redis_url))
    assert after["cust_count_1h"] == 1
    assert after["cust_sum_1h"] == 42.0
    assert after["merch_count_1h"] == 1


def test_every_key_has_a_ttl(redis_url: str) -> None:
    async def fill(store: OnlineFeatureStore) -> list[str]:
        await store.fetch_and_update([event("a", T0, "c1", "m1"), event("b", T0 + 1, "c2", "m2")])
        await store.fetch_and_update([StoreEvent("g", T0 + 2, "c3", "m3", 3.0, 48.85, 2.35)])
        return await store.apply_labels([LabelEvent("a", True, T0 + 10), LabelEvent("b", False, T0 + 10)])

    assert run(fill, redis_url) == ["recorded", "recorded"]
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = list(client.scan_iter("*"))
    kinds = {key.split(":")[1] for key in keys}
    assert kinds == {"cust", "cust_sum", "cust_geo", "cust_merch", "merch", "tx", "cust_lbl", "merch_lbl"}
    ttls = {key: client.pttl(key) for key in keys}
    client.close()
    assert all(0 < ttl <= KEY_TTL_MS for ttl in ttls.values()), ttls


def test_late_arrivals_are_placed_by_event_time(redis_url: str) -> None:
    async def out_of_order(store: OnlineFeatureStore) -> list[dict[str, float | None]]:
        late_first = await store.fetch_and_update([event("ten", T0 + 10 * HOUR_MS, amount=100.0)])
        nine = await store.fetch_and_update([event("nine", T0 + 9 * HOUR_MS, amount=1.0)])
        eleven = await store.fetch_and_update([event("eleven", T0 + 11 * HOUR_MS, amount=1.0)])
        return [row(late_first), row(nine), row(eleven)]

    ten, nine, eleven = run(out_of_order, redis_url)
    assert ten["cust_count_1d"] == 0
    assert nine["cust_count_1d"] == 0  # the 10:00 event arrived first but lies in nine's future
    assert nine["cust_last_ts_ms"] is None
    assert eleven["cust_count_1d"] == 2
    assert eleven["cust_count_1h"] == 1  # only 10:00 is within [10:00, 11:00)
    assert eleven["cust_last_ts_ms"] == T0 + 10 * HOUR_MS


def test_labels_record_repeat_correct_and_report_unknown(redis_url: str) -> None:
    labelled_at = T0 + DAY_MS

    async def story(store: OnlineFeatureStore) -> tuple[list[list[str]], list[dict[str, float | None]]]:
        await store.fetch_and_update([event("fraud", T0, "c1", "m1")])
        statuses = [await store.apply_labels([LabelEvent("fraud", True, labelled_at)])]
        before_repeat = snapshot(redis_url)
        statuses.append(
            await store.apply_labels(
                [LabelEvent("fraud", True, labelled_at + 5), LabelEvent("nope", True, 1)]
            )
        )
        assert snapshot(redis_url) == before_repeat
        probes = [
            row(await store.fetch_and_update([event("at", labelled_at, "c1", "m2")])),
            row(await store.fetch_and_update([event("after", labelled_at + 1, "c1", "m1")])),
        ]
        statuses.append(await store.apply_labels([LabelEvent("fraud", False, labelled_at + 2)]))
        probes.append(row(await store.fetch_and_update([event("corrected", labelled_at + 3, "c1", "m1")])))
        statuses.append(await store.apply_labels([LabelEvent("fraud", True, labelled_at + 4)]))
        probes.append(row(await store.fetch_and_update([event("again", labelled_at + 5, "c2", "m1")])))
        return statuses, probes

    statuses, (at, after, corrected, again) = run(story, redis_url)
    assert statuses == [["recorded"], ["unchanged", "unknown"], ["corrected"], ["corrected"]]
    assert at["cust_fraud_labels_30d"] == 0  # labelled_at == t: not yet known
    assert (after["cust_fraud_labels_30d"], after["merch_fraud_labels_7d"]) == (1, 1)
    assert (corrected["cust_fraud_labels_30d"], corrected["merch_fraud_labels_30d"]) == (0, 0)
    assert (again["cust_fraud_labels_30d"], again["merch_fraud_labels_30d"]) == (0, 1)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    stored = client.hmget("fraud:tx:fraud", ["label", "labelled_at"])
    client.close()
    assert stored == ["1", str(labelled_at + 4)]


def test_edge_cases_agree_with_the_offline_implementation(redis_url: str) -> None:
    """Window starts, same-timestamp events and geo ties, sent in a deliberately scrambled order per ts."""
    rows = [
        ("e1", T0, "c1", "m1", 5.0, 1.0, 2.0),
        ("e0", T0, "c1", "m2", 7.0, 3.0, 4.0),  # tie with e1: e1 is the larger id, its place wins
        ("e3", T0 + HOUR_MS, "c1", "m1", 11.0, None, None),  # T0 is exactly on its 1 h window start
        ("e2", T0 + HOUR_MS, "c2", "m1", 13.0, None, None),
        ("e4", T0 + HOUR_MS + 1, "c1", "m1", 17.0, 5.0, 6.0),
        ("e5", T0 + 31 * DAY_MS, "c1", "m2", 19.0, None, None),
    ]
    events = [StoreEvent(*r) for r in rows]
    online = run(lambda s: s.fetch_and_update(events), redis_url)
    df = pd.DataFrame(
        rows, columns=["transaction_id", "ts", "customer_id", "merchant_id", "amount", "lat", "lon"]
    )
    df["timestamp"] = pd.to_datetime(df["ts"], unit="ms", utc=True)
    df[["lat", "lon"]] = df[["lat", "lon"]].astype(float)
    offline = compute_raw_aggregates(df, label_delay_ms=0)
    for name in RAW_NAMES:
        np.testing.assert_array_equal(online[name], offline[name], err_msg=name)
    assert online["cust_prev_lat"][2] == 1.0


def test_a_conflicting_retry_keeps_the_first_answer_and_warns(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    first = row(run(lambda s: s.fetch_and_update([event("x", T0, amount=1.0)]), redis_url))
    before = snapshot(redis_url)
    with caplog.at_level(logging.WARNING, logger="serve_app.features.online"):
        second = row(run(lambda s: s.fetch_and_update([event("x", T0 + 5, amount=999.0)]), redis_url))
    assert second == first
    assert snapshot(redis_url) == before
    assert "sent again with other content" in caplog.text
    assert "999" not in caplog.text  # no payment details in logs


def test_the_script_is_reloaded_after_a_script_flush(redis_url: str) -> None:
    run(lambda s: s.fetch_and_update([event("a", T0)]), redis_url)
    client = redis.Redis.from_url(redis_url)
    client.script_flush()
    client.close()
    answer = row(run(lambda s: s.fetch_and_update([event("b", T0 + 1)]), redis_url))
    assert answer["cust_count_1h"] == 1


def test_the_sync_twin_shares_keys_and_answers_with_the_async_store(redis_url: str) -> None:
    sync = SyncOnlineFeatureStore(redis_url)
    statuses = sync.replay(
        [event("a", T0), KeyedLabel(LabelEvent("a", True, T0), "c1", "m1"), event("b", T0 + 1)]
    )
    assert statuses == ["new", "recorded", "new"]
    labels = [
        KeyedLabel(LabelEvent("a", True, T0), "c1", "m1"),
        KeyedLabel(LabelEvent("zz", False, T0), "c", "m"),
    ]
    assert sync.replay(labels) == ["unchanged", "unknown"]
    from_async = row(run(lambda s: s.fetch_and_update([event("b", T0 + 1)]), redis_url))
    from_sync = row(sync.fetch_and_update([event("b", T0 + 1)]))
    probe = row(sync.fetch_and_update([event("c", T0 + 2)]))
    sync.close()
    assert from_async == from_sync
    assert from_sync["cust_count_1h"] == 1
    assert probe["cust_count_1h"] == 2
    assert probe["cust_fraud_labels_30d"] == 1


def test_unreachable_store_fails_fast_and_ping_says_so() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    assert run(lambda s: s.ping(), url) is False
    with pytest.raises(OnlineStoreError):
        run(lambda s: s.fetch_and_update([event("a", T0)]), url)


def test_ids_that_would_break_the_encoding_are_refused(redis_url: str) -> None:
    with pytest.raises(ValueError, match="customer_id"):
        run(lambda s: s.fetch_and_update([event("a", T0, customer="c|1")]), redis_url)
    assert snapshot(redis_url) == {}


def test_from_transaction_floors_the_timestamp_to_whole_milliseconds() -> None:
    tx = Transaction.model_validate(
        {
            "transaction_id": "t1",
            "timestamp": "2026-01-01T00:00:00.001999+00:00",
            "customer_id": "c1",
            "merchant_id": "m1",
            "amount": 3.5,
            "lat": 1.5,
            "lon": -2.5,
        }
    )
    assert StoreEvent.from_transaction(tx) == StoreEvent("t1", T0 + 1, "c1", "m1", 3.5, 1.5, -2.5)
