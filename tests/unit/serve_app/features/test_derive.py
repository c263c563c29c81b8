"""Derived features on hand-computed examples: the code both offline and online paths share."""

from __future__ import annotations

import math

import numpy as np
import pytest

from serve_app.features.contract import FEATURE_NAMES, RAW_NAMES, SECS_SINCE_LAST_CAP
from serve_app.features.derive import (
    RequestColumns,
    derive_features,
    haversine_km,
    linear_transform,
    request_features,
)

# 2026-01-03 is a Saturday; 02:30 UTC is night.
SATURDAY_0230_MS = 1767407400000


def _empty_raw(n: int) -> dict[str, np.ndarray]:
    raw = {name: np.zeros(n) for name in RAW_NAMES}
    for name in ("cust_last_ts_ms", "cust_prev_geo_ts_ms", "cust_prev_lat", "cust_prev_lon"):
        raw[name] = np.full(n, np.nan)
    return raw


def _col(x: np.ndarray, name: str) -> np.ndarray:
    return x[:, FEATURE_NAMES.index(name)]


def test_request_features_read_time_channel_and_location() -> None:
    req = RequestColumns.from_records(
        amount=[25.5, 4500.0],
        ts_ms=[SATURDAY_0230_MS, SATURDAY_0230_MS + 12 * 3_600_000],
        channel=["online", None],
        lat=[None, 48.85],
        lon=[None, 2.35],
    )
    f = request_features(req)
    assert f["is_night"].tolist() == [1.0, 0.0]
    assert f["is_weekend"].tolist() == [1.0, 1.0]
    assert f["channel_online"].tolist() == [1.0, 0.0]
    assert f["channel_atm"].tolist() == [0.0, 0.0]
    assert f["has_geo"].tolist() == [0.0, 1.0]
    assert f["hour_sin"][0] == pytest.approx(math.sin(2 * math.pi * 2.5 / 24))
    assert f["hour_cos"][1] == pytest.approx(math.cos(2 * math.pi * 14.5 / 24))


def test_first_transaction_of_a_customer_reads_as_no_history() -> None:
    req = RequestColumns.from_records([100.0], [SATURDAY_0230_MS], ["pos"], [48.0], [2.0])
    x = derive_features(_empty_raw(1), req)
    assert x.shape == (1, len(FEATURE_NAMES))
    assert _col(x, "cust_avg_amount_30d")[0] == 0.0
    assert _col(x, "cust_amount_ratio_30d")[0] == 1.0
    assert _col(x, "cust_secs_since_last")[0] == SECS_SINCE_LAST_CAP
    assert _col(x, "cust_new_merchant")[0] == 1.0
    assert _col(x, "geo_distance_km")[0] == 0.0
    assert _col(x, "geo_speed_kmh")[0] == 0.0
    assert _col(x, "merch_fraud_rate_30d")[0] == 0.0


def test_history_features_from_raw_aggregates() -> None:
    t = SATURDAY_0230_MS
    raw = _empty_raw(1)
    raw["cust_count_7d"][:] = 4
    raw["cust_sum_7d"][:] = 200.0
    raw["cust_count_30d"][:] = 10
    raw["cust_sum_30d"][:] = 500.0
    raw["cust_last_ts_ms"][:] = t - 90_000  # 90 s ago
    raw["cust_prev_geo_ts_ms"][:] = t - 3_600_000  # one hour ago, in Paris
    raw["cust_prev_lat"][:] = 48.8566
    raw["cust_prev_lon"][:] = 2.3522
    raw["cust_merchant_count_30d"][:] = 3
    raw["merch_count_30d"][:] = 40
    raw["merch_fraud_labels_30d"][:] = 2
    req = RequestColumns.from_records([1000.0], [t], ["pos"], [40.7128], [-74.0060])  # New York
    x = derive_features(raw, req)
    assert _col(x, "cust_avg_amount_7d")[0] == 50.0
    assert _col(x, "cust_avg_amount_30d")[0] == 50.0
    assert _col(x, "cust_amount_ratio_30d")[0] == 20.0
    assert _col(x, "cust_secs_since_last")[0] == 90.0
    assert _col(x, "cust_new_merchant")[0] == 0.0
    paris_ny = _col(x, "geo_distance_km")[0]
    assert paris_ny == pytest.approx(5837, rel=0.01)
    assert _col(x, "geo_speed_kmh")[0] == pytest.approx(paris_ny)  # over exactly one hour
    assert _col(x, "merch_fraud_rate_30d")[0] == pytest.approx(0.05)


def test_speed_over_less_than_a_minute_is_measured_over_one_minute() -> None:
    t = SATURDAY_0230_MS
    raw = _empty_raw(1)
    raw["cust_prev_geo_ts_ms"][:] = t - 1_000
    raw["cust_prev_lat"][:] = 0.0
    raw["cust_prev_lon"][:] = 0.0
    req = RequestColumns.from_records([10.0], [t], ["pos"], [0.0], [1.0])
    x = derive_features(raw, req)
    assert _col(x, "geo_speed_kmh")[0] == pytest.approx(_col(x, "geo_distance_km")[0] * 60)


def test_missing_raw_aggregate_is_refused_by_name() -> None:
    raw = _empty_raw(1)
    del raw["merch_count_1h"]
    req = RequestColumns.from_records([1.0], [0], [None], [None], [None])
    with pytest.raises(KeyError, match="merch_count_1h"):
        derive_features(raw, req)


def test_haversine_is_zero_on_the_same_point_and_nan_without_coordinates() -> None:
    a = np.array([10.0, np.nan])
    assert haversine_km(a, a, a, a)[0] == 0.0
    assert np.isnan(haversine_km(a, a, a, a)[1])


def test_linear_transform_logs_only_heavy_tailed_columns() -> None:
    x = np.ones((1, len(FEATURE_NAMES)))
    out = linear_transform(x)
    assert out[0, FEATURE_NAMES.index("amount")] == pytest.approx(math.log(2))
    assert out[0, FEATURE_NAMES.index("hour_sin")] == 1.0
    assert x[0, 0] == 1.0  # input untouched
