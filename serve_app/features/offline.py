"""Point-in-time raw aggregates and model features over a history frame: the offline half of the contract.

Every aggregate is "events of the same group (customer, merchant, customer×merchant) with time in
[t - w, t)". Events are sorted once per group kind by an int64 key `group * span + time`, so both bounds of
a window for all rows come from one `np.searchsorted` each, counts are index differences and sums are
differences of a cumulative sum. No Python loop runs per row; ~1M rows take seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from serve_app.features.contract import LABEL_WINDOWS_MS, RAW_NAMES, RETENTION_MS, WINDOWS_MS
from serve_app.features.derive import FloatArray, RequestColumns, derive_features

IntArray = npt.NDArray[np.int64]
REQUIRED_COLUMNS: tuple[str, ...] = ("transaction_id", "timestamp", "customer_id", "merchant_id", "amount")
_INT64_MAX = np.iinfo(np.int64).max


def timestamps_ms(values: pd.Series) -> IntArray:
    """Epoch milliseconds (floored) of a timestamp column; naive datetimes are read as UTC."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        raise ValueError("column 'timestamp' must hold datetimes or RFC 3339 strings, not numbers")
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        parsed = values.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(values):
        parsed = values.dt.tz_localize("UTC")
    else:
        parsed = pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")
        failed = parsed.isna().to_numpy() & values.notna().to_numpy()
        if failed.any():  # rare non-ISO spellings: let pandas infer them one by one
            retry = pd.to_datetime(values[failed], utc=True, errors="coerce", format="mixed")
            parsed = parsed.copy()
            parsed[failed] = retry
    missing = parsed.isna().to_numpy()
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise ValueError(f"column 'timestamp', row {row} (0-based): {values.iloc[row]!r} is not a timestamp")
    naive = parsed.dt.tz_localize(None).to_numpy()
    return naive.astype("datetime64[ms]").view(np.int64)


def _float_column(df: pd.DataFrame, name: str) -> FloatArray:
    numbers = pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    unreadable = np.isnan(numbers) & df[name].notna().to_numpy()
    if unreadable.any():
        row = int(np.flatnonzero(unreadable)[0])
        raise ValueError(f"column {name!r}, row {row} (0-based): {df[name].iloc[row]!r} is not a number")
    return numbers


def _group_codes(df: pd.DataFrame, name: str) -> IntArray:
    codes, _ = pd.factorize(df[name])
    if (codes < 0).any():
        row = int(np.flatnonzero(codes < 0)[0])
        raise ValueError(f"column {name!r}, row {row} (0-based): missing identifier")
    return codes.astype(np.int64)


def _require_columns(df: pd.DataFrame, names: tuple[str, ...]) -> None:
    missing = [c for c in names if c not in df.columns]
    if missing:
        raise ValueError(f"history frame is missing columns: {missing}")


def fraud_mask(df: pd.DataFrame) -> npt.NDArray[np.bool_]:
    """Rows labelled fraud; no `is_fraud` column (or a missing value) means no label."""
    if "is_fraud" not in df.columns:
        return np.zeros(len(df), dtype=bool)
    return pd.to_numeric(df["is_fraud"], errors="coerce").to_numpy(dtype=np.float64, na_value=0.0) == 1


def _validate(df: pd.DataFrame, label_delay_ms: int) -> None:
    _require_columns(df, REQUIRED_COLUMNS)
    if label_delay_ms < 0:
        raise ValueError(f"label_delay_ms must be >= 0, got {label_delay_ms}")
    duplicated = df["transaction_id"].duplicated().to_numpy()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated)[0])
        raise ValueError(
            f"column 'transaction_id', row {row} (0-based): {df['transaction_id'].iloc[row]!r} repeats"
        )


def request_columns_from_frame(df: pd.DataFrame) -> RequestColumns:
    """The request fields of every row, as the online path builds them from a Transaction."""
    _require_columns(df, ("timestamp", "amount"))
    amount = _float_column(df, "amount")
    bad = ~np.isfinite(amount) | (amount <= 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"column 'amount', row {row} (0-based): {amount[row]!r} is not a positive finite number"
        )
    nan_column = np.full(len(df), np.nan)
    lat = _float_column(df, "lat") if "lat" in df.columns else nan_column
    lon = _float_column(df, "lon") if "lon" in df.columns else nan_column.copy()
    if "channel" in df.columns:
        channel = df["channel"].astype(object).where(df["channel"].notna(), "").astype(str)
        channel_values = channel.to_numpy(dtype=object)
    else:
        channel_values = np.full(len(df), "", dtype=object)
    return RequestColumns(
        amount=amount, ts_ms=timestamps_ms(df["timestamp"]), channel=channel_values, lat=lat, lon=lon
    )


@dataclass(frozen=True)
class _Timeline:
    """Maps (group code, time) to one sortable int64 key; `origin` sits a retention before any event."""

    origin: int
    span: int

    @classmethod
    def covering(cls, times: IntArray, n_groups: int) -> _Timeline:
        origin = int(times.min()) - RETENTION_MS
        span = int(times.max()) - origin + 1
        if n_groups * span >= _INT64_MAX:
            raise ValueError("history spans too many groups × milliseconds for int64 keys")
        return cls(origin, span)

    def key(self, group: IntArray, time: IntArray) -> IntArray:
        return group * self.span + (time - self.origin)


class _GroupedEvents:
    """Events sorted by (group, time[, tie rank]), as one int64 key array to binary-search."""

    def __init__(
        self, timeline: _Timeline, group: IntArray, time: IntArray, tie_rank: IntArray | None = None
    ) -> None:
        keys = timeline.key(group, time)
        self.order = np.argsort(keys, kind="stable") if tie_rank is None else np.lexsort((tie_rank, keys))
        self.keys = keys[self.order]


class _Queries:
    """Query rows sorted by (group, t): needles in ascending order keep every binary search cache-warm
    (several times faster than random needles); results are scattered back to the frame's row order."""

    def __init__(self, timeline: _Timeline, group: IntArray, t: IntArray) -> None:
        self.timeline = timeline
        self.order = np.argsort(timeline.key(group, t), kind="stable")
        self.group = group[self.order]
        self.t = t[self.order]

    def bounds(self, events: _GroupedEvents, width: int) -> tuple[IntArray, IntArray]:
        """Sorted-order index range [lo, hi) of the events of each query's group in [t - width, t)."""
        lo = np.searchsorted(events.keys, self.timeline.key(self.group, self.t - width), side="left")
        hi = np.searchsorted(events.keys, self.timeline.key(self.group, self.t), side="left")
        return lo.astype(np.int64), hi.astype(np.int64)

    def scatter(self, values: npt.NDArray[Any]) -> npt.NDArray[Any]:
        out = np.empty_like(values)
        out[self.order] = values
        return out

    def counts(self, events: _GroupedEvents, windows: Mapping[str, int]) -> dict[str, FloatArray]:
        out: dict[str, FloatArray] = {}
        for name, width in windows.items():
            lo, hi = self.bounds(events, width)
            out[name] = self.scatter((hi - lo).astype(np.float64))
        return out

    def most_recent(self, events: _GroupedEvents) -> tuple[IntArray, npt.NDArray[np.bool_]]:
        """Per query (row order): position in the events' input of its latest event in [t - 30 d, t)."""
        lo, hi = self.bounds(events, RETENTION_MS)
        found = hi > lo
        if not len(events.order):  # no events at all: nothing to point at, and nothing is found
            return np.zeros(len(found), dtype=np.int64), self.scatter(found)
        return self.scatter(events.order[np.where(found, hi - 1, 0)]), self.scatter(found)


def _tie_rank(group: IntArray, t: IntArray, txid: pd.Series) -> IntArray:
    """Rank of transaction_id among events sharing (group, t), 0 elsewhere: sorting by it puts the larger id
    (code-point order = UTF-8 byte order) last. Only ties are ranked, since sorting strings is slow."""
    tied = pd.DataFrame({"g": group, "t": t}).duplicated(keep=False).to_numpy()
    rank = np.zeros(len(group), dtype=np.int64)
    if tied.any():
        rank[tied] = pd.factorize(txid.iloc[np.flatnonzero(tied)].astype(str), sort=True)[0]
    return rank


def compute_raw_aggregates(df: pd.DataFrame, label_delay_ms: int) -> dict[str, FloatArray]:
    """RAW_NAMES -> float64 arrays aligned with df's row order (df need not be sorted)."""
    _validate(df, label_delay_ms)
    return _raw_aggregates(df, request_columns_from_frame(df), label_delay_ms)


def compute_features(df: pd.DataFrame, label_delay_ms: int) -> FloatArray:
    """(n, len(FEATURE_NAMES)) model inputs in df's row order: derive_features over the offline aggregates."""
    _validate(df, label_delay_ms)
    req = request_columns_from_frame(df)
    return derive_features(_raw_aggregates(df, req, label_delay_ms), req)


def _raw_aggregates(df: pd.DataFrame, req: RequestColumns, label_delay_ms: int) -> dict[str, FloatArray]:
    n = len(df)
    if n == 0:
        return {name: np.empty(0, dtype=np.float64) for name in RAW_NAMES}
    t = req.ts_ms
    customer = _group_codes(df, "customer_id")
    merchant = _group_codes(df, "merchant_id")
    pair = pd.factorize(customer * (int(merchant.max()) + 1) + merchant)[0].astype(np.int64)
    is_fraud = fraud_mask(df)
    labelled_at = t + np.int64(label_delay_ms)

    all_times = np.concatenate([t, labelled_at[is_fraud]])
    n_groups = max(int(customer.max()), int(merchant.max()), int(pair.max())) + 1
    timeline = _Timeline.covering(all_times, n_groups)
    by_customer_q = _Queries(timeline, customer, t)
    by_merchant_q = _Queries(timeline, merchant, t)
    raw: dict[str, FloatArray] = {}

    by_customer = _GroupedEvents(timeline, customer, t)
    # Longdouble prefix sums keep window sums within ~1e-12 of a direct sum even over millions of rows.
    prefix = np.concatenate([[0.0], np.cumsum(req.amount[by_customer.order].astype(np.longdouble))])
    for name, width in WINDOWS_MS.items():
        lo, hi = by_customer_q.bounds(by_customer, width)
        raw[f"cust_count_{name}"] = by_customer_q.scatter((hi - lo).astype(np.float64))
        raw[f"cust_sum_{name}"] = by_customer_q.scatter((prefix[hi] - prefix[lo]).astype(np.float64))

    last_row, has_last = by_customer_q.most_recent(by_customer)
    raw["cust_last_ts_ms"] = np.where(has_last, t[last_row], np.nan)

    geo_rows = np.flatnonzero(np.isfinite(req.lat) & np.isfinite(req.lon))
    geo_rank = _tie_rank(customer[geo_rows], t[geo_rows], df["transaction_id"].iloc[geo_rows])
    geo_events = _GroupedEvents(timeline, customer[geo_rows], t[geo_rows], geo_rank)
    geo_pos, has_geo = by_customer_q.most_recent(geo_events)
    geo_row = geo_rows[geo_pos] if len(geo_rows) else geo_pos
    raw["cust_prev_geo_ts_ms"] = np.where(has_geo, t[geo_row], np.nan)
    raw["cust_prev_lat"] = np.where(has_geo, req.lat[geo_row], np.nan)
    raw["cust_prev_lon"] = np.where(has_geo, req.lon[geo_row], np.nan)

    by_pair = _GroupedEvents(timeline, pair, t)
    visits = _Queries(timeline, pair, t).counts(by_pair, {"30d": RETENTION_MS})
    raw["cust_merchant_count_30d"] = visits["30d"]

    fraud_rows = np.flatnonzero(is_fraud)
    customer_labels = _GroupedEvents(timeline, customer[fraud_rows], labelled_at[fraud_rows])
    raw["cust_fraud_labels_30d"] = by_customer_q.counts(customer_labels, {"30d": RETENTION_MS})["30d"]

    by_merchant = _GroupedEvents(timeline, merchant, t)
    for name, count in by_merchant_q.counts(by_merchant, WINDOWS_MS).items():
        raw[f"merch_count_{name}"] = count
    merchant_labels = _GroupedEvents(timeline, merchant[fraud_rows], labelled_at[fraud_rows])
    for name, count in by_merchant_q.counts(merchant_labels, LABEL_WINDOWS_MS).items():
        raw[f"merch_fraud_labels_{name}"] = count

    return {name: raw[name] for name in RAW_NAMES}
