"""Loader validation: every refusal names the row (and CSV line) and the column; good files load sorted."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serve_app.schemas import MAX_AMOUNT
from train.data import DataValidationError, load_transactions

HEADER = "transaction_id,timestamp,customer_id,merchant_id,amount,channel,lat,lon,is_fraud"
GOOD_ROWS = [
    "t3,2026-01-01T10:00:00Z,c1,m1,12.5,pos,48.85,2.35,0",
    "t1,2026-01-01T09:00:00+01:00,c2,m2,3.99,online,,,1",
    "t2,2026-01-01T08:00:00.250Z,c1,m3,100,atm,52.52,13.40,0",
]


def write_csv(tmp_path: Path, rows: list[str], header: str = HEADER) -> Path:
    path = tmp_path / "tx.csv"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def refusal(tmp_path: Path, rows: list[str], header: str = HEADER) -> str:
    with pytest.raises(DataValidationError) as caught:
        load_transactions(write_csv(tmp_path, rows, header))
    return str(caught.value)


def test_good_csv_loads_sorted_with_utc_millisecond_timestamps(tmp_path: Path) -> None:
    df = load_transactions(write_csv(tmp_path, GOOD_ROWS))
    assert str(df["timestamp"].dtype) == "datetime64[ms, UTC]"
    # t1 at 09:00+01:00 is 08:00Z, before t2 at 08:00:00.250Z.
    assert df["transaction_id"].tolist() == ["t1", "t2", "t3"]
    assert df["is_fraud"].tolist() == [1, 0, 0]
    assert df["timestamp"].iloc[1] == pd.Timestamp("2026-01-01T08:00:00.250Z")
    assert np.isnan(df["lat"].iloc[0])
    assert df["lat"].iloc[1] == pytest.approx(52.52)
    assert "fraud_scenario" not in df.columns


def test_ties_on_timestamp_sort_by_transaction_id(tmp_path: Path) -> None:
    rows = ["b,2026-01-01T00:00:00Z,c,m,1,,,,0", "a,2026-01-01T00:00:00Z,c,m,1,,,,0"]
    assert load_transactions(write_csv(tmp_path, rows))["transaction_id"].tolist() == ["a", "b"]


def test_parquet_keeps_fraud_scenario_and_names_rows_without_line(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "transaction_id": ["a", "b"],
            "timestamp": pd.to_datetime(["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"], utc=True),
            "customer_id": ["c", "c"],
            "merchant_id": ["m", "m"],
            "amount": [1.0, -2.0],
            "is_fraud": [0, 1],
            "fraud_scenario": ["", "card_testing"],
        }
    )
    path = tmp_path / "tx.parquet"
    df.to_parquet(path)
    with pytest.raises(DataValidationError, match=r"column 'amount'.*row 2\b") as caught:
        load_transactions(path)
    assert "line" not in str(caught.value)
    df.loc[1, "amount"] = 2.0
    df.to_parquet(path)
    assert load_transactions(path)["fraud_scenario"].tolist() == ["", "card_testing"]


def test_naive_parquet_timestamps_are_refused(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "transaction_id": ["a"],
            "timestamp": pd.to_datetime(["2026-01-01T00:00:00"]),
            "customer_id": ["c"],
            "merchant_id": ["m"],
            "amount": [1.0],
            "is_fraud": [0],
        }
    )
    path = tmp_path / "tx.parquet"
    df.to_parquet(path)
    with pytest.raises(DataValidationError, match=r"column 'timestamp'.*no timezone"):
        load_transactions(path)


def test_missing_required_column_is_named(tmp_path: Path) -> None:
    header = HEADER.replace("merchant_id,", "")
    rows = [",".join(r.split(",")[:3] + r.split(",")[4:]) for r in GOOD_ROWS]
    message = refusal(tmp_path, rows, header)
    assert "merchant_id" in message
    assert "missing required column" in message


@pytest.mark.parametrize(
    ("bad_row", "column", "words"),
    [
        ("tx,2026-01-01T00:00:00Z,c,m,-1,pos,,,0", "amount", "> 0"),
        ("tx,2026-01-01T00:00:00Z,c,m,0,pos,,,0", "amount", "> 0"),
        ("tx,2026-01-01T00:00:00Z,c,m,inf,pos,,,0", "amount", "non-finite"),
        ("tx,2026-01-01T00:00:00Z,c,m,,pos,,,0", "amount", "missing"),
        ("tx,2026-01-01T00:00:00Z,c,m,abc,pos,,,0", "amount", "not a number"),
        (f"tx,2026-01-01T00:00:00Z,c,m,{MAX_AMOUNT * 2},pos,,,0", "amount", "<="),
        ("tx,2026-01-01T00:00:00,c,m,1,pos,,,0", "timestamp", "without timezone"),
        ("tx,2026-01-01,c,m,1,pos,,,0", "timestamp", "without timezone"),
        ("tx,2026-13-45T00:00:00Z,c,m,1,pos,,,0", "timestamp", "unparseable"),
        ("tx,,c,m,1,pos,,,0", "timestamp", "missing"),
        ("t x,2026-01-01T00:00:00Z,c,m,1,pos,,,0", "transaction_id", "not matching"),
        ("tx,2026-01-01T00:00:00Z,,m,1,pos,,,0", "customer_id", "missing"),
        (f"tx,2026-01-01T00:00:00Z,c,{'m' * 65},1,pos,,,0", "merchant_id", "not matching"),
        ("tx,2026-01-01T00:00:00Z,c,m,1,pos,,,2", "is_fraud", "0 or 1"),
        ("tx,2026-01-01T00:00:00Z,c,m,1,pos,,,yes", "is_fraud", "not a number"),
        ("tx,2026-01-01T00:00:00Z,c,m,1,pos,48.8,,0", "lon", "lat given without lon"),
        ("tx,2026-01-01T00:00:00Z,c,m,1,pos,,2.3,0", "lat", "lon given without lat"),
        ("tx,2026-01-01T00:00:00Z,c,m,1,pos,95,2.3,0", "lat", "[-90, 90]"),
        ("tx,2026-01-01T00:00:00Z,c,m,1,card,,,0", "channel", "one of"),
    ],
)
def test_each_bad_value_names_row_line_and_column(
    tmp_path: Path, bad_row: str, column: str, words: str
) -> None:
    # The bad row is the third data row: row 3, line 4 (line 1 is the header).
    message = refusal(tmp_path, [GOOD_ROWS[0], GOOD_ROWS[1], bad_row])
    assert f"column {column!r}" in message
    assert "row 3 (line 4)" in message
    assert words in message


def test_duplicate_transaction_id_names_both_rows(tmp_path: Path) -> None:
    rows = [*GOOD_ROWS, "t3,2026-01-02T00:00:00Z,c9,m9,5,pos,,,0"]
    message = refusal(tmp_path, rows)
    assert "duplicate 't3'" in message
    assert "row 1 (line 2)" in message
    assert "row 4 (line 5)" in message


def test_many_bad_rows_are_counted_not_all_listed(tmp_path: Path) -> None:
    rows = [f"t{i},2026-01-01T00:00:00Z,c,m,-1,pos,,,0" for i in range(20)]
    message = refusal(tmp_path, rows)
    assert "and 15 more rows" in message
    assert len(re.findall(r"row \d+ \(line \d+\)", message)) == 5


def test_unsupported_and_missing_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="does not exist"):
        load_transactions(tmp_path / "nope.csv")
    other = tmp_path / "tx.json"
    other.write_text("{}")
    with pytest.raises(DataValidationError, match="unsupported file type"):
        load_transactions(other)


def test_a_million_rows_validate_in_seconds(tmp_path: Path) -> None:
    n = 1_000_000
    rng = np.random.default_rng(0)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    df = pd.DataFrame(
        {
            "transaction_id": [f"tx_{i:08d}" for i in range(n)],
            "timestamp": start + pd.to_timedelta(rng.integers(0, 30 * 86_400_000, n), unit="ms"),
            "customer_id": [f"c_{i % 5000}" for i in range(n)],
            "merchant_id": [f"m_{i % 700}" for i in range(n)],
            "amount": rng.uniform(1, 500, n).round(2),
            "is_fraud": (rng.random(n) < 0.01).astype(np.int64),
        }
    )
    path = tmp_path / "big.parquet"
    df.to_parquet(path)
    started = time.perf_counter()
    loaded = load_transactions(path)
    elapsed = time.perf_counter() - started
    assert len(loaded) == n
    assert loaded["timestamp"].is_monotonic_increasing
    # Generous for a loaded CI box (idle: a few seconds); a per-row Python loop would take minutes.
    assert elapsed < 30.0, f"validating 1M rows took {elapsed:.1f} s"
