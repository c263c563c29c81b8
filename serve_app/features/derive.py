"""Model features from request fields and raw aggregates: the same numpy code offline and online."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from serve_app.features.contract import (
    DAY_MS,
    FEATURE_NAMES,
    HEAVY_TAILED,
    HOUR_MS,
    MIN_TRAVEL_HOURS,
    RAW_NAMES,
    SECS_SINCE_LAST_CAP,
)

FloatArray = npt.NDArray[np.float64]
EARTH_RADIUS_KM = 6371.0088


@dataclass(frozen=True)
class RequestColumns:
    """Request fields of a batch, column-wise. Missing lat/lon are NaN, missing channel is ''."""

    amount: FloatArray
    ts_ms: npt.NDArray[np.int64]
    channel: npt.NDArray[np.str_] | npt.NDArray[np.object_]
    lat: FloatArray
    lon: FloatArray

    @classmethod
    def from_records(
        cls,
        amount: Sequence[float],
        ts_ms: Sequence[int],
        channel: Sequence[str | None],
        lat: Sequence[float | None],
        lon: Sequence[float | None],
    ) -> RequestColumns:
        return cls(
            amount=np.asarray(amount, dtype=np.float64),
            ts_ms=np.asarray(ts_ms, dtype=np.int64),
            channel=np.asarray([c or "" for c in channel], dtype=object),
            lat=np.asarray([np.nan if v is None else v for v in lat], dtype=np.float64),
            lon=np.asarray([np.nan if v is None else v for v in lon], dtype=np.float64),
        )


def haversine_km(lat1: FloatArray, lon1: FloatArray, lat2: FloatArray, lon2: FloatArray) -> FloatArray:
    """Great-circle distance; NaN where any coordinate is NaN."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dphi = p2 - p1
    dlmb = np.radians(lon2 - lon1)
    a = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def request_features(req: RequestColumns) -> dict[str, FloatArray]:
    """Features that need nothing but the request (what degraded mode still has)."""
    ms_of_day = np.mod(req.ts_ms, DAY_MS).astype(np.float64)
    hour = ms_of_day / HOUR_MS
    # 1970-01-01 was a Thursday: day index 0 = Thursday, so Saturday = 2 and Sunday = 3.
    weekday = np.mod(np.floor_divide(req.ts_ms, DAY_MS), 7)
    channel = req.channel.astype(str)
    return {
        "amount": req.amount.astype(np.float64),
        "hour_sin": np.sin(2 * np.pi * hour / 24.0),
        "hour_cos": np.cos(2 * np.pi * hour / 24.0),
        "is_night": (hour < 6.0).astype(np.float64),
        "is_weekend": np.isin(weekday, (2, 3)).astype(np.float64),
        "channel_online": (channel == "online").astype(np.float64),
        "channel_atm": (channel == "atm").astype(np.float64),
        "has_geo": (~np.isnan(req.lat) & ~np.isnan(req.lon)).astype(np.float64),
    }


def history_features(raw: Mapping[str, FloatArray], req: RequestColumns) -> dict[str, FloatArray]:
    """Features derived from the raw aggregates of RAW_NAMES (NaN = no such event)."""
    missing = [n for n in RAW_NAMES if n not in raw]
    if missing:
        raise KeyError(f"raw aggregates missing: {missing}")
    c7, c30 = raw["cust_count_7d"], raw["cust_count_30d"]
    avg7 = np.divide(raw["cust_sum_7d"], c7, out=np.zeros_like(c7), where=c7 > 0)
    avg30 = np.divide(raw["cust_sum_30d"], c30, out=np.zeros_like(c30), where=c30 > 0)
    ratio = np.divide(req.amount, avg30, out=np.ones_like(avg30), where=avg30 > 0)

    t = req.ts_ms.astype(np.float64)
    last = raw["cust_last_ts_ms"]
    since = np.where(np.isnan(last), SECS_SINCE_LAST_CAP, (t - last) / 1000.0)
    since = np.minimum(since, SECS_SINCE_LAST_CAP)

    dist = haversine_km(raw["cust_prev_lat"], raw["cust_prev_lon"], req.lat, req.lon)
    dist = np.where(np.isnan(dist), 0.0, dist)
    hours = (t - raw["cust_prev_geo_ts_ms"]) / HOUR_MS
    hours = np.where(np.isnan(hours), 1.0, np.maximum(hours, MIN_TRAVEL_HOURS))
    speed = dist / hours

    m30 = raw["merch_count_30d"]
    return {
        "cust_count_1h": raw["cust_count_1h"],
        "cust_count_1d": raw["cust_count_1d"],
        "cust_count_7d": c7,
        "cust_count_30d": c30,
        "cust_sum_1h": raw["cust_sum_1h"],
        "cust_sum_1d": raw["cust_sum_1d"],
        "cust_avg_amount_7d": avg7,
        "cust_avg_amount_30d": avg30,
        "cust_amount_ratio_30d": ratio,
        "cust_secs_since_last": since,
        "cust_new_merchant": (raw["cust_merchant_count_30d"] == 0).astype(np.float64),
        "cust_merchant_count_30d": raw["cust_merchant_count_30d"],
        "geo_distance_km": dist,
        "geo_speed_kmh": speed,
        "cust_fraud_labels_30d": raw["cust_fraud_labels_30d"],
        "merch_count_1h": raw["merch_count_1h"],
        "merch_count_1d": raw["merch_count_1d"],
        "merch_count_7d": raw["merch_count_7d"],
        "merch_count_30d": m30,
        "merch_fraud_labels_7d": raw["merch_fraud_labels_7d"],
        "merch_fraud_labels_30d": raw["merch_fraud_labels_30d"],
        "merch_fraud_rate_30d": raw["merch_fraud_labels_30d"] / np.maximum(m30, 1.0),
    }


def assemble(columns: Mapping[str, FloatArray]) -> FloatArray:
    """Stack named columns into the (n, len(FEATURE_NAMES)) matrix in contract order."""
    return np.column_stack([np.asarray(columns[n], dtype=np.float64) for n in FEATURE_NAMES])


def derive_features(raw: Mapping[str, FloatArray], req: RequestColumns) -> FloatArray:
    """The model input matrix for a batch: request features plus history features, contract order."""
    return assemble({**request_features(req), **history_features(raw, req)})


def linear_transform(x: FloatArray) -> FloatArray:
    """The linear model's view of the features: log1p on heavy-tailed (non-negative) columns."""
    out = np.array(x, dtype=np.float64, copy=True)
    heavy = np.asarray(HEAVY_TAILED)
    out[:, heavy] = np.log1p(np.maximum(out[:, heavy], 0.0))
    return out
