"""Hand-computed examples of the offline (pandas) implementation of the feature contract."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from serve_app.features.contract import DAY_MS, FEATURE_NAMES, HOUR_MS, RAW_NAMES, SECS_SINCE_LAST_CAP
from serve_app.features.derive import derive_features
from serve_app.features.offline import (
    compute_features,
    compute_raw_aggregates,
    request_columns_from_frame,
    timestamps_ms,
)

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MINUTE_MS = 60_000


def frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    """Rows with defaults: ids from position, customer c1, merchant m1, amount 10, no location, genuine."""
    full = []
    for i, row in enumerate(rows):
        ts = row.get("ts", T0)
        assert isinstance(ts, int)
        full.append(
            {
                "transaction_id": row.get("id", f"tx_{i:03d}"),
                "timestamp": pd.Timestamp(ts, unit="ms", tz="UTC"),
                "customer_id": row.get("customer", "c1"),
                "merchant_id": row.get("merchant", "m1"),
                "amount": row.get("amount", 10.0),
                "channel": row.get("channel", "pos"),
                "lat": row.get("lat", np.nan),
                "lon": row.get("lon", np.nan),
                "is_fraud": row.get("fraud", 0),
            }
        )
    return pd.DataFrame(full)


def raw_of(df: pd.DataFrame, delay_ms: int = 0) -> dict[str, np.ndarray]:
    return compute_raw_aggregates(df, label_delay_ms=delay_ms)


def feature(matrix: np.ndarray, name: str) -> np.ndarray:
    return matrix[:, FEATURE_NAMES.index(name)]


def test_window_start_is_inclusive_and_end_exclusive() -> None:
    df = frame([{"ts": T0}, {"ts": T0 + 1}, {"ts": T0 + HOUR_MS}, {"ts": T0 + HOUR_MS + 1}])
    raw = raw_of(df)
    # Row 2 at T0+1h: window [T0, T0+1h) holds rows 0 and 1 (row 0 sits exactly on the start).
    # Row 3 at T0+1h+1ms: window [T0+1ms, T0+1h+1ms) holds rows 1 and 2, row 0 is 1 ms too old.
    np.testing.assert_array_equal(raw["cust_count_1h"], [0, 1, 2, 2])
    np.testing.assert_array_equal(raw["cust_sum_1h"], [0, 10, 20, 20])
    np.testing.assert_array_equal(raw["cust_count_1d"], [0, 1, 2, 3])
    np.testing.assert_array_equal(raw["merch_count_1h"], [0, 1, 2, 2])


def test_events_at_the_same_timestamp_are_not_history_of_each_other() -> None:
    df = frame([{"ts": T0, "amount": 5.0}, {"ts": T0, "amount": 7.0}, {"ts": T0 + MINUTE_MS, "amount": 1.0}])
    raw = raw_of(df)
    np.testing.assert_array_equal(raw["cust_count_1h"], [0, 0, 2])
    np.testing.assert_array_equal(raw["cust_sum_1h"], [0, 0, 12])
    np.testing.assert_array_equal(raw["merch_count_1h"], [0, 0, 2])
    np.testing.assert_array_equal(raw["cust_last_ts_ms"], [np.nan, np.nan, T0])


def test_most_recent_located_event_breaks_timestamp_ties_by_larger_id_in_byte_order() -> None:
    # 'tx_a' > 'tx_B' in byte order ('a' = 97, 'B' = 66), although a case-insensitive order says otherwise.
    df = frame(
        [
            {"id": "tx_a", "ts": T0, "lat": 1.0, "lon": 2.0},
            {"id": "tx_B", "ts": T0, "lat": 3.0, "lon": 4.0},
            {"id": "tx_c", "ts": T0 + MINUTE_MS},
        ]
    )
    raw = raw_of(df)
    assert raw["cust_prev_lat"][2] == 1.0
    assert raw["cust_prev_lon"][2] == 2.0
    assert raw["cust_prev_geo_ts_ms"][2] == T0
    # The row order of the frame must not matter.
    reversed_raw = raw_of(df.iloc[::-1].reset_index(drop=True))
    assert reversed_raw["cust_prev_lat"][0] == 1.0


def test_previous_location_skips_events_without_coordinates() -> None:
    df = frame(
        [
            {"ts": T0, "lat": 48.0, "lon": 2.0},
            {"ts": T0 + MINUTE_MS},
            {"ts": T0 + 2 * MINUTE_MS, "lat": 52.0, "lon": 13.0},
        ]
    )
    raw = raw_of(df)
    np.testing.assert_array_equal(raw["cust_prev_geo_ts_ms"], [np.nan, T0, T0])
    np.testing.assert_array_equal(raw["cust_last_ts_ms"], [np.nan, T0, T0 + MINUTE_MS])


def test_first_transaction_of_a_customer_has_no_history() -> None:
    df = frame([{"customer": "old", "ts": T0}, {"customer": "new", "ts": T0 + HOUR_MS, "amount": 40.0}])
    raw = raw_of(df)
    for name in RAW_NAMES:
        if name.startswith("merch_"):
            continue
        value = raw[name][1]
        if name.startswith(("cust_last", "cust_prev")):
            assert math.isnan(value), name
        else:
            assert value == 0.0, name
    x = compute_features(df, label_delay_ms=0)
    assert feature(x, "cust_secs_since_last")[1] == SECS_SINCE_LAST_CAP
    assert feature(x, "cust_amount_ratio_30d")[1] == 1.0
    assert feature(x, "cust_new_merchant")[1] == 1.0
    assert feature(x, "geo_distance_km")[1] == 0.0
    assert feature(x, "merch_count_1h")[1] == 1.0  # the merchant did see the other customer


def test_a_fraud_label_counts_only_once_labelled_at_is_before_t() -> None:
    delay = 2 * DAY_MS
    df = frame(
        [
            {"id": "fraud", "ts": T0, "fraud": 1, "merchant": "m1"},
            {"id": "at_label_time", "ts": T0 + delay, "merchant": "m2"},
            {"id": "after", "ts": T0 + delay + 1, "merchant": "m1"},
            {"id": "other_customer", "ts": T0 + delay + 1, "customer": "c2", "merchant": "m1"},
        ]
    )
    raw = raw_of(df, delay)
    np.testing.assert_array_equal(raw["cust_fraud_labels_30d"], [0, 0, 1, 0])
    np.testing.assert_array_equal(raw["merch_fraud_labels_7d"], [0, 0, 1, 1])
    # Without a delay the label is known at the fraud's own timestamp, so from the next row on.
    np.testing.assert_array_equal(raw_of(df, 0)["cust_fraud_labels_30d"], [0, 1, 1, 0])


def test_label_windows_are_on_labelled_at_not_on_the_transaction_time() -> None:
    delay = 2 * DAY_MS
    labelled_at = T0 + delay
    df = frame(
        [
            {"ts": T0, "fraud": 1},
            {"ts": labelled_at + 7 * DAY_MS},  # label exactly 7 d old: still inside [t - 7 d, t)
            {"ts": labelled_at + 7 * DAY_MS + 1},
            {"ts": labelled_at + 30 * DAY_MS + 1},  # beyond 30 d of labelled_at, though the fraud is older
        ]
    )
    raw = raw_of(df, delay)
    np.testing.assert_array_equal(raw["merch_fraud_labels_7d"], [0, 1, 0, 0])
    np.testing.assert_array_equal(raw["merch_fraud_labels_30d"], [0, 1, 1, 0])
    np.testing.assert_array_equal(raw["cust_fraud_labels_30d"], [0, 1, 1, 0])


def test_history_older_than_retention_is_forgotten() -> None:
    df = frame([{"ts": T0}, {"ts": T0 + 30 * DAY_MS}, {"ts": T0 + 60 * DAY_MS + 1}])
    raw = raw_of(df)
    np.testing.assert_array_equal(raw["cust_count_30d"], [0, 1, 0])
    np.testing.assert_array_equal(raw["cust_last_ts_ms"], [np.nan, T0, np.nan])
    np.testing.assert_array_equal(raw["cust_merchant_count_30d"], [0, 1, 0])
    x = compute_features(df, label_delay_ms=0)
    np.testing.assert_array_equal(feature(x, "cust_secs_since_last"), [SECS_SINCE_LAST_CAP] * 3)


def test_distance_and_speed_from_the_previous_located_transaction() -> None:
    paris, berlin = (48.8566, 2.3522), (52.52, 13.405)
    two_hours = 2 * HOUR_MS
    df = frame(
        [
            {"ts": T0, "lat": paris[0], "lon": paris[1]},
            {"ts": T0 + two_hours, "lat": berlin[0], "lon": berlin[1]},
            {"ts": T0 + two_hours + 1000, "lat": berlin[0], "lon": berlin[1]},  # 1 s later, same place
        ]
    )
    x = compute_features(df, label_delay_ms=0)
    p1, p2 = math.radians(paris[0]), math.radians(berlin[0])
    dlon = math.radians(berlin[1] - paris[1])
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dlon / 2) ** 2
    km = 2 * 6371.0088 * math.asin(math.sqrt(a))
    assert 870 < km < 885  # sanity of the hand computation itself: Paris-Berlin is about 878 km
    np.testing.assert_allclose(feature(x, "geo_distance_km"), [0.0, km, 0.0], atol=1e-9)
    np.testing.assert_allclose(feature(x, "geo_speed_kmh"), [0.0, km / 2.0, 0.0], atol=1e-9)


def test_new_merchant_and_visits_to_this_merchant() -> None:
    df = frame(
        [
            {"ts": T0, "merchant": "m1"},
            {"ts": T0 + MINUTE_MS, "merchant": "m2"},
            {"ts": T0 + 2 * MINUTE_MS, "merchant": "m1"},
            {"ts": T0 + 3 * MINUTE_MS, "merchant": "m1", "customer": "c2"},
        ]
    )
    raw = raw_of(df)
    np.testing.assert_array_equal(raw["cust_merchant_count_30d"], [0, 0, 1, 0])
    np.testing.assert_array_equal(raw["merch_count_30d"], [0, 0, 1, 2])
    x = compute_features(df, label_delay_ms=0)
    np.testing.assert_array_equal(feature(x, "cust_new_merchant"), [1, 1, 0, 1])


def test_sums_averages_and_ratio() -> None:
    df = frame(
        [
            {"ts": T0, "amount": 10.0},
            {"ts": T0 + DAY_MS, "amount": 30.0},
            {"ts": T0 + 2 * DAY_MS, "amount": 60.0},
        ]
    )
    x = compute_features(df, label_delay_ms=0)
    np.testing.assert_allclose(feature(x, "cust_avg_amount_30d"), [0.0, 10.0, 20.0])
    np.testing.assert_allclose(feature(x, "cust_amount_ratio_30d"), [1.0, 3.0, 3.0])
    np.testing.assert_allclose(
        feature(x, "cust_sum_1d"), [0.0, 10.0, 30.0]
    )  # the day window starts inclusive


def test_results_follow_the_frame_row_order_whatever_it_is() -> None:
    rng = np.random.default_rng(3)
    rows = [
        {
            "ts": T0 + int(rng.integers(0, 3 * DAY_MS)),
            "customer": f"c{rng.integers(0, 4)}",
            "amount": float(i + 1),
        }
        for i in range(60)
    ]
    df = frame(rows)
    shuffled = df.sample(frac=1.0, random_state=5)
    raw_sorted = raw_of(df)
    raw_shuffled = raw_of(shuffled.reset_index(drop=True))
    position = shuffled.index.to_numpy()
    for name in RAW_NAMES:
        np.testing.assert_array_equal(raw_shuffled[name], raw_sorted[name][position], err_msg=name)


def test_compute_features_is_derive_features_of_the_raw_aggregates() -> None:
    df = frame(
        [{"ts": T0, "channel": "online"}, {"ts": T0 + HOUR_MS, "channel": None, "lat": 1.0, "lon": 1.0}]
    )
    expected = derive_features(raw_of(df, 5), request_columns_from_frame(df))
    np.testing.assert_array_equal(compute_features(df, label_delay_ms=5), expected)


def test_request_columns_read_missing_channel_and_location_as_empty_and_nan() -> None:
    df = frame([{"channel": None}, {"channel": "atm", "lat": 10.5, "lon": -3.25}])
    req = request_columns_from_frame(df)
    assert list(req.channel) == ["", "atm"]
    assert math.isnan(req.lat[0])
    assert req.lon[1] == -3.25
    bare = request_columns_from_frame(df.drop(columns=["channel", "lat", "lon"]))
    assert list(bare.channel) == ["", ""]
    assert np.isnan(bare.lat).all()


def test_timestamps_parse_offsets_and_read_naive_datetimes_as_utc() -> None:
    text = pd.Series(["2026-01-01T01:00:00+01:00", "2026-01-01T00:00:00.250Z"])
    np.testing.assert_array_equal(timestamps_ms(text), [T0, T0 + 250])
    naive = pd.Series([datetime(2026, 1, 1)])
    np.testing.assert_array_equal(timestamps_ms(naive), [T0])


def test_no_is_fraud_column_means_no_labels() -> None:
    df = frame([{"ts": T0, "fraud": 1}, {"ts": T0 + DAY_MS}]).drop(columns=["is_fraud"])
    np.testing.assert_array_equal(raw_of(df)["cust_fraud_labels_30d"], [0, 0])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda df: df.drop(columns=["merchant_id"]), "missing columns: ['merchant_id']"),
        (lambda df: df.assign(timestamp=["2026-01-01T00:00:00Z", "yesterday"]), "column 'timestamp', row 1"),
        (lambda df: df.assign(amount=[1.0, -2.0]), "column 'amount', row 1"),
        (lambda df: df.assign(amount=[1.0, "ten"]), "column 'amount', row 1"),
        (lambda df: df.assign(transaction_id=["a", "a"]), "column 'transaction_id', row 1"),
        (lambda df: df.assign(customer_id=["c1", None]), "column 'customer_id', row 1"),
        (lambda df: df.assign(timestamp=[1, 2]), "not numbers"),
    ],
)
def test_bad_input_names_the_column_and_row(
    change: Callable[[pd.DataFrame], pd.DataFrame], message: str
) -> None:
    df = frame([{"ts": T0}, {"ts": T0 + 1}])
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        compute_raw_aggregates(change(df), label_delay_ms=0)


def test_negative_label_delay_is_refused() -> None:
    with pytest.raises(ValueError, match="label_delay_ms"):
        compute_raw_aggregates(frame([{}]), label_delay_ms=-1)


def test_empty_frame_gives_empty_columns() -> None:
    empty = frame([{}]).iloc[:0]
    raw = raw_of(empty)
    assert all(len(raw[n]) == 0 for n in RAW_NAMES)
