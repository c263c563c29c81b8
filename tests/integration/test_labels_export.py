"""Label export from a real Redis filled by the real online store, and the merge used for retraining."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis

from serve_app.features.online import LabelEvent, StoreEvent, SyncOnlineFeatureStore
from train.data import load_transactions
from train.labels import LabelExportError, main, merge_labels, read_labels

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY = 86_400_000


def _fill(redis_url: str, n: int = 2500) -> dict[str, tuple[int, int]]:
    """Scores n transactions through the store, labels 2 in 3 of them (more than one SCAN page)."""
    store = SyncOnlineFeatureStore(redis_url)
    rng = np.random.default_rng(11)
    events = [
        StoreEvent(
            f"tx-{i:05d}", T0 + i * 1000, f"c{i % 37}", f"m{i % 11}", float(rng.uniform(1, 500)), None, None
        )
        for i in range(n)
    ]
    store.fetch_and_update(events)
    expected: dict[str, tuple[int, int]] = {}
    labels = []
    for i, ev in enumerate(events):
        if i % 3 == 2:
            continue  # scored, never labelled
        flag = int(rng.random() < 0.2)
        expected[ev.transaction_id] = (flag, ev.ts_ms + 2 * DAY)
        labels.append(LabelEvent(ev.transaction_id, bool(flag), ev.ts_ms + 2 * DAY))
    assert set(store.apply_labels(labels)) == {"recorded"}
    # A correction keeps only the latest verdict and time.
    corrected = events[0].transaction_id
    new_flag = 1 - expected[corrected][0]
    assert store.apply_labels([LabelEvent(corrected, bool(new_flag), T0 + 5 * DAY)]) == ["corrected"]
    expected[corrected] = (new_flag, T0 + 5 * DAY)
    store.close()
    return expected


def test_every_stored_label_is_exported_once_and_unlabelled_transactions_are_not(redis_url: str) -> None:
    expected = _fill(redis_url)
    client = redis.Redis.from_url(redis_url)
    labels = read_labels(client)
    client.close()
    assert len(labels) == len(expected)
    got = {
        row.transaction_id: (int(row.is_fraud), int(row.labelled_at.value // 1_000_000))
        for row in labels.itertuples(index=False)
    }
    assert got == expected
    assert labels["labelled_at"].is_monotonic_increasing


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_cli_export_writes_a_file_that_round_trips(redis_url: str, tmp_path: Path, suffix: str) -> None:
    expected = _fill(redis_url, 300)
    out = tmp_path / f"labels{suffix}"
    assert main(["export", "--redis-url", redis_url, "--out", str(out)]) == 0
    frame = pd.read_parquet(out) if suffix == ".parquet" else pd.read_csv(out, dtype={"transaction_id": str})
    assert list(frame.columns) == ["transaction_id", "is_fraud", "labelled_at"]
    stamps = pd.to_datetime(frame["labelled_at"], utc=True)
    got = {
        str(t): (int(f), int(s.value // 1_000_000))
        for t, f, s in zip(frame["transaction_id"], frame["is_fraud"], stamps, strict=True)
    }
    assert got == expected


def test_a_corrupt_label_is_named_not_skipped(redis_url: str, tmp_path: Path) -> None:
    _fill(redis_url, 30)
    client = redis.Redis.from_url(redis_url)
    client.hset("fraud:tx:tx-00004", mapping={"label": "maybe"})
    client.close()
    with pytest.raises(LabelExportError, match=r"fraud:tx:tx-00004.*'maybe'"):
        read_labels(redis.Redis.from_url(redis_url))
    assert main(["export", "--redis-url", redis_url, "--out", str(tmp_path / "x.csv")]) == 1


def test_exported_labels_merge_into_a_trainable_file(redis_url: str, tmp_path: Path) -> None:
    expected = _fill(redis_url, 120)
    labels_file = tmp_path / "labels.parquet"
    assert main(["export", "--redis-url", redis_url, "--out", str(labels_file)]) == 0
    transactions = pd.DataFrame(
        {
            "transaction_id": [f"tx-{i:05d}" for i in range(120)],
            "timestamp": pd.to_datetime(T0 + np.arange(120) * 1000, unit="ms", utc=True),
            "customer_id": [f"c{i % 37}" for i in range(120)],
            "merchant_id": [f"m{i % 11}" for i in range(120)],
            "amount": 10.0,
        }
    )
    tx_file = tmp_path / "tx.csv"
    out = tmp_path / "relabelled.csv"
    transactions.to_csv(tx_file, index=False)
    assert (
        main(["join", "--transactions", str(tx_file), "--labels", str(labels_file), "--out", str(out)]) == 0
    )
    merged = load_transactions(out)  # the training loader accepts it
    for row in merged.itertuples(index=False):
        assert row.is_fraud == expected.get(row.transaction_id, (0, 0))[0]


def test_merge_refuses_labels_that_are_not_zero_or_one() -> None:
    tx = pd.DataFrame({"transaction_id": ["a", "b"]})
    bad = pd.DataFrame({"transaction_id": ["a"], "is_fraud": [2], "labelled_at": ["2026-01-01T00:00:00Z"]})
    with pytest.raises(LabelExportError, match="labels row 1: is_fraud 2"):
        merge_labels(tx, bad)
