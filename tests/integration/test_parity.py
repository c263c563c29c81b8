"""The core promise: a stream replayed through the Redis store yields exactly the offline features.

The stream is the product's own generator, made harder on purpose: random mixed-case transaction ids (so
"larger id" means byte order, not generation order or locale), simultaneous events of one customer and of
one merchant, transactions at the exact moment a label becomes known, and more than 30 days of history.
Simultaneous events are replayed in random order and labels go before transactions at equal times, so
neither arrival order nor label timing can hide behind a lucky sort.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serve_app.features.contract import DAY_MS, FEATURE_NAMES, RAW_NAMES
from serve_app.features.derive import FloatArray, RequestColumns, derive_features
from serve_app.features.offline import compute_features, compute_raw_aggregates, timestamps_ms
from serve_app.features.online import LabelEvent, OnlineFeatureStore, StoreEvent, SyncOnlineFeatureStore
from serve_app.schemas import Transaction
from train.generate import GeneratorConfig, generate, write_transactions

pytestmark = pytest.mark.integration

LABEL_DELAY_MS = 2 * DAY_MS
BATCH = 256
ID_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"))


def _snap_to_previous(df: pd.DataFrame, group: str, rows: np.ndarray) -> None:
    """Move each chosen row onto the timestamp of the previous event of its customer/merchant."""
    previous = df.groupby(group)["timestamp"].shift(1)
    chosen = df.index[rows][previous.iloc[rows].notna().to_numpy()]
    df.loc[chosen, "timestamp"] = previous.loc[chosen]


def hard_stream(seed: int = 11) -> pd.DataFrame:
    df = generate(GeneratorConfig(customers=120, merchants=50, days=45, seed=seed, fraud_rate_target=0.03))
    rng = np.random.default_rng(seed)
    n = len(df)
    tokens = ["".join(rng.choice(ID_ALPHABET, 10)) for _ in range(n)]
    df["transaction_id"] = [f"{t}_{i}" for i, t in enumerate(tokens)]  # unique, order unrelated to time
    _snap_to_previous(df, "customer_id", rng.choice(n, n // 25, replace=False))
    _snap_to_previous(df, "merchant_id", rng.choice(n, n // 40, replace=False))
    # Transactions of the fraudster's customer and merchant at the very millisecond the label is known.
    frauds = df.index[df["is_fraud"] == 1][:40]
    at_label = df.loc[frauds].copy()
    at_label["timestamp"] = at_label["timestamp"] + pd.Timedelta(milliseconds=LABEL_DELAY_MS)
    at_label["transaction_id"] = [f"atlabel_{i}" for i in range(len(at_label))]
    at_label["is_fraud"] = 0
    df = pd.concat([df, at_label], ignore_index=True)
    return df.sort_values(["timestamp", "transaction_id"], kind="mergesort").reset_index(drop=True)


def transactions_of(df: pd.DataFrame) -> list[Transaction]:
    """The rows as the HTTP API would receive them (so StoreEvent.from_transaction is on the path too)."""
    records = df.assign(timestamp=df["timestamp"].map(lambda ts: ts.isoformat())).to_dict("records")
    fields = ("transaction_id", "timestamp", "customer_id", "merchant_id", "amount", "channel", "lat", "lon")
    return [
        Transaction.model_validate(
            {k: (None if isinstance(r[k], float) and np.isnan(r[k]) else r[k]) for k in fields}
        )
        for r in records
    ]


def request_columns(transactions: Sequence[Transaction]) -> RequestColumns:
    return RequestColumns.from_records(
        amount=[t.amount for t in transactions],
        ts_ms=[StoreEvent.from_transaction(t).ts_ms for t in transactions],
        channel=[t.channel for t in transactions],
        lat=[t.lat for t in transactions],
        lon=[t.lon for t in transactions],
    )


def replay_plan(df: pd.DataFrame, seed: int) -> list[tuple[str, list[int]]]:
    """('tx' | 'label', row positions) batches in event time; simultaneous transactions in random order."""
    ts = timestamps_ms(df["timestamp"])
    fraud = np.flatnonzero(df["is_fraud"].to_numpy() == 1)
    rows = np.concatenate([np.arange(len(df)), fraud])
    when = np.concatenate([ts, ts[fraud] + LABEL_DELAY_MS])
    kind = np.concatenate([np.ones(len(df), dtype=int), np.zeros(len(fraud), dtype=int)])  # labels first
    shuffle = np.random.default_rng(seed).random(len(rows))
    plan: list[tuple[str, list[int]]] = []
    for k in np.lexsort((shuffle, kind, when)):
        name = "tx" if kind[k] else "label"
        if not plan or plan[-1][0] != name or len(plan[-1][1]) == BATCH:
            plan.append((name, []))
        plan[-1][1].append(int(rows[k]))
    return plan


async def replay_online(
    redis_url: str,
    df: pd.DataFrame,
    events: Sequence[StoreEvent],
    midway: Callable[[], object] | None = None,
) -> FloatArray:
    """Raw aggregates per row from the async store, labels applied through its label API; `midway` runs
    once half of the batches are in."""
    out = np.full((len(df), len(RAW_NAMES)), np.nan)
    store = OnlineFeatureStore(redis_url, timeout_s=5.0)
    ts = timestamps_ms(df["timestamp"])
    plan = replay_plan(df, seed=3)
    try:
        for step, (kind, rows) in enumerate(plan):
            if midway is not None and step == len(plan) // 2:
                midway()
            if kind == "tx":
                raw = await store.fetch_and_update([events[i] for i in rows])
                out[rows] = np.column_stack([raw[name] for name in RAW_NAMES])
            else:
                labels = [
                    LabelEvent(events[i].transaction_id, True, int(ts[i]) + LABEL_DELAY_MS) for i in rows
                ]
                assert await store.apply_labels(labels) == ["recorded"] * len(rows)
    finally:
        await store.aclose()
    return out


def assert_columns_equal(online: FloatArray, offline: FloatArray, names: Sequence[str]) -> None:
    """Every column equal within rtol = atol = 1e-6, NaN == NaN; the message lists what differs where."""
    close = np.isclose(online, offline, rtol=1e-6, atol=1e-6) | (np.isnan(online) & np.isnan(offline))
    problems = []
    for j, name in enumerate(names):
        wrong = np.flatnonzero(~close[:, j])
        if len(wrong):
            i = int(wrong[0])
            problems.append(
                f"{name}: {len(wrong)} rows, e.g. row {i}: online {online[i, j]!r}, offline {offline[i, j]!r}"
            )
    assert not problems, "online != offline:\n" + "\n".join(problems)


@pytest.fixture(scope="module")
def stream() -> pd.DataFrame:
    df = hard_stream()
    ts = pd.Series(timestamps_ms(df["timestamp"]))
    assert len(df) >= 5000
    assert df.duplicated(["customer_id", "timestamp"]).sum() >= 100
    assert df.duplicated(["merchant_id", "timestamp"]).sum() >= 100
    span_days = ts.groupby(df["customer_id"]).agg(lambda s: (s.max() - s.min()) / DAY_MS)
    assert (span_days > 30).sum() >= 50
    assert df["is_fraud"].sum() >= 100
    assert df["lat"].notna().mean() > 0.3
    return df


def test_replayed_stream_matches_offline_raw_aggregates_and_features(
    redis_url: str, stream: pd.DataFrame
) -> None:
    transactions = transactions_of(stream)
    events = [StoreEvent.from_transaction(t) for t in transactions]
    started = time.perf_counter()
    online_raw = asyncio.run(replay_online(redis_url, stream, events))
    print(f"\nreplayed {len(stream)} transactions online in {time.perf_counter() - started:.2f} s")

    offline = compute_raw_aggregates(stream, LABEL_DELAY_MS)
    assert_columns_equal(online_raw, np.column_stack([offline[n] for n in RAW_NAMES]), RAW_NAMES)

    online_features = derive_features(
        {name: online_raw[:, j] for j, name in enumerate(RAW_NAMES)}, request_columns(transactions)
    )
    assert_columns_equal(online_features, compute_features(stream, LABEL_DELAY_MS), FEATURE_NAMES)

    # The comparison was not vacuous: every hard case actually occurred in the stream.
    assert (offline["cust_fraud_labels_30d"] > 0).sum() >= 20
    assert (offline["merch_fraud_labels_7d"] > 0).sum() >= 100
    seen_before = stream.groupby("customer_id").cumcount().to_numpy()
    assert (offline["cust_count_30d"] < seen_before).sum() >= 1000  # retention trimmed real history
    assert np.isfinite(offline["cust_prev_lat"]).sum() >= 1000


def test_materialized_store_holds_the_offline_answers_and_starts_warm(
    redis_url: str, stream: pd.DataFrame, tmp_path: Path
) -> None:
    path = tmp_path / "history.csv"
    write_transactions(stream, path)
    started = time.perf_counter()
    done = subprocess.run(
        [
            *(sys.executable, "-m", "train.materialize", "--data", str(path), "--redis-url", redis_url),
            *("--batch-size", "500", "--label-delay-days", str(LABEL_DELAY_MS / DAY_MS), "--quiet"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    print(
        f"\nmaterialized {len(stream)} rows in {time.perf_counter() - started:.2f} s: {done.stdout.strip()}"
    )
    assert done.returncode == 0, done.stderr
    assert f"'new': {len(stream)}" in done.stdout

    events = [StoreEvent.from_transaction(t) for t in transactions_of(stream)]
    sync = SyncOnlineFeatureStore(redis_url)
    statuses = sync.replay(events)
    assert set(statuses) == {"dup"}  # every row was loaded, and with the same content

    # Each stored answer (what a retry of that transaction gets) is the offline value.
    async def stored_answers() -> FloatArray:
        store = OnlineFeatureStore(redis_url, timeout_s=5.0)
        try:
            raw = await store.fetch_and_update(events)
        finally:
            await store.aclose()
        return np.column_stack([raw[n] for n in RAW_NAMES])

    offline = compute_raw_aggregates(stream, LABEL_DELAY_MS)
    assert_columns_equal(
        asyncio.run(stored_answers()), np.column_stack([offline[n] for n in RAW_NAMES]), RAW_NAMES
    )

    # Warm: new transactions after the end of the file see the history and the labels the file implies.
    last = stream.drop_duplicates("customer_id", keep="last")
    probes = last.assign(
        transaction_id=[f"probe_{i}" for i in range(len(last))],
        timestamp=last["timestamp"].max() + pd.Timedelta(hours=1),
        is_fraud=0,
    )
    probe_events = [StoreEvent.from_transaction(t) for t in transactions_of(probes)]
    online_probe = sync.fetch_and_update(probe_events)
    sync.close()
    with_probes = compute_raw_aggregates(pd.concat([stream, probes], ignore_index=True), LABEL_DELAY_MS)
    expected = np.column_stack([with_probes[n][len(stream) :] for n in RAW_NAMES])
    assert_columns_equal(np.column_stack([online_probe[n] for n in RAW_NAMES]), expected, RAW_NAMES)
    assert (expected[:, RAW_NAMES.index("cust_count_30d")] > 0).all()
    assert (expected[:, RAW_NAMES.index("merch_fraud_labels_30d")] > 0).any()


def hot_customer_stream(seed: int = 5, events: int = 3000) -> pd.DataFrame:
    """One customer with thousands of events over 40 days (a card under a card-testing attack), among a
    few quiet ones: ties, located and online events, several merchants, frauds."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    n_quiet = 400
    customers = np.concatenate([np.full(events, "hot"), rng.choice([f"c{i}" for i in range(20)], n_quiet)])
    n = len(customers)
    offsets = np.sort(rng.integers(0, 40 * DAY_MS, n))
    offsets[1::15] = offsets[0:-1:15]  # simultaneous events
    located = rng.random(n) < 0.5
    df = pd.DataFrame(
        {
            "transaction_id": ["".join(rng.choice(ID_ALPHABET, 8)) + f"_{i}" for i in range(n)],
            "timestamp": start + pd.to_timedelta(offsets, unit="ms"),
            "customer_id": rng.permutation(customers),
            "merchant_id": rng.choice([f"m{i}" for i in range(8)], n),
            "amount": np.round(rng.lognormal(3.0, 1.2, n), 2) + 0.01,
            "channel": np.where(located, "pos", "online"),
            "lat": np.where(located, np.round(rng.uniform(40, 50, n), 5), np.nan),
            "lon": np.where(located, np.round(rng.uniform(0, 10, n), 5), np.nan),
            "is_fraud": (rng.random(n) < 0.02).astype(int),
        }
    )
    return df.sort_values(["timestamp", "transaction_id"], kind="mergesort").reset_index(drop=True)


def test_a_customer_with_a_long_history_matches_offline(redis_url: str) -> None:
    """The store keeps running sums and per-merchant sets instead of reading the history: same answers."""
    df = hot_customer_stream()
    events = [StoreEvent.from_transaction(t) for t in transactions_of(df)]
    online_raw = asyncio.run(replay_online(redis_url, df, events))
    offline = compute_raw_aggregates(df, LABEL_DELAY_MS)
    assert_columns_equal(online_raw, np.column_stack([offline[n] for n in RAW_NAMES]), RAW_NAMES)
    hot = (df["customer_id"] == "hot").to_numpy()
    assert offline["cust_count_30d"][hot].max() >= 2000
    assert (offline["cust_count_30d"][hot] < np.arange(hot.sum())).sum() >= 500  # retention trimmed it


def test_a_history_stored_without_running_sums_is_adopted(redis_url: str, stream: pd.DataFrame) -> None:
    """A store written before the running sums (or one that lost them) still answers like offline."""
    import redis

    def forget_the_derived_keys() -> None:
        client = redis.Redis.from_url(redis_url)
        for pattern in ("fraud:cust_sum:*", "fraud:cust_geo:*", "fraud:cust_merch:*"):
            for key in client.scan_iter(match=pattern, count=1000):
                client.delete(key)
        assert not list(client.scan_iter(match="fraud:cust_sum:*"))
        client.close()

    events = [StoreEvent.from_transaction(t) for t in transactions_of(stream)]
    online_raw = asyncio.run(replay_online(redis_url, stream, events, midway=forget_the_derived_keys))
    offline = compute_raw_aggregates(stream, LABEL_DELAY_MS)
    assert_columns_equal(online_raw, np.column_stack([offline[n] for n in RAW_NAMES]), RAW_NAMES)


def test_a_late_transaction_counts_for_the_transactions_after_it(redis_url: str) -> None:
    """A transaction older than the customer's newest: its own history and the later answers are exact."""
    start = pd.Timestamp("2026-03-01 12:00", tz="UTC")
    rows = [  # in arrival order; the third is late (30 minutes after the first, sent after the second)
        ("t1", start, 10.0),
        ("t2", start + pd.Timedelta(hours=3), 20.0),
        ("t3", start + pd.Timedelta(minutes=30), 40.0),
        ("t4", start + pd.Timedelta(hours=3, minutes=10), 80.0),
    ]
    df = pd.DataFrame(
        {
            "transaction_id": [r[0] for r in rows],
            "timestamp": [r[1] for r in rows],
            "customer_id": "late",
            "merchant_id": ["m1", "m2", "m1", "m1"],
            "amount": [r[2] for r in rows],
            "channel": "online",
            "lat": np.nan,
            "lon": np.nan,
            "is_fraud": 0,
        }
    )
    sync = SyncOnlineFeatureStore(redis_url)
    answers = [sync.fetch_and_update([StoreEvent.from_transaction(t)]) for t in transactions_of(df)]
    sync.close()
    offline = compute_raw_aggregates(df, LABEL_DELAY_MS)
    for row in (2, 3):  # t2 was answered before t3 existed; t3 and t4 must see everything before them
        online = np.array([[answers[row][n][0] for n in RAW_NAMES]])
        assert_columns_equal(online, np.array([[offline[n][row] for n in RAW_NAMES]]), RAW_NAMES)
    assert answers[3]["cust_sum_1d"][0] == 70.0  # t1 + t2 + t3
    assert answers[3]["cust_sum_1h"][0] == 20.0  # t2 only
