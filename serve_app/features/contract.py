"""Names, order, windows and meaning of every feature; the single source both implementations obey.

Two layers keep offline and online equal by construction:
- *raw aggregates* (RAW_NAMES) are the only thing that needs history. Offline computes them with pandas
  (`offline.py`), online with one Lua script per transaction (`online.py` + `online.lua`). The parity test
  compares these two.
- *model features* (FEATURE_NAMES) are derived from raw aggregates and request fields by `derive.py`, the
  same numpy code on both paths, so they cannot drift once the raw aggregates agree.

Semantics every implementation must follow (times are integer epoch milliseconds, UTC):
- A window `w` for an event at time t covers history events with t - w <= ts < t. Events with the same
  timestamp as t are *not* history (so the arrival order of simultaneous events does not matter).
- "Most recent" ties on timestamp are broken by the larger transaction_id (byte order).
- A fraud label counts from the moment it becomes known (`labelled_at`), and only if labelled_at < t;
  label windows are on labelled_at. Offline, labelled_at = ts + label delay for rows with is_fraud == 1.
- History older than RETENTION_MS is forgotten (the online store trims it, offline never looks further).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
WINDOWS_MS: dict[str, int] = {"1h": HOUR_MS, "1d": DAY_MS, "7d": 7 * DAY_MS, "30d": 30 * DAY_MS}
LABEL_WINDOWS_MS: dict[str, int] = {"7d": 7 * DAY_MS, "30d": 30 * DAY_MS}
RETENTION_MS = WINDOWS_MS["30d"]
SECS_SINCE_LAST_CAP = RETENTION_MS / 1000.0  # "no earlier transaction in 30 days" reads as 30 days
MIN_TRAVEL_HOURS = 1.0 / 60.0  # speeds over less than a minute are measured as over one minute

# Raw aggregates, in the order the Lua script returns them. NaN means "no such event".
RAW_NAMES: tuple[str, ...] = (
    *(f"cust_count_{w}" for w in WINDOWS_MS),
    *(f"cust_sum_{w}" for w in WINDOWS_MS),
    "cust_last_ts_ms",  # most recent customer event in the 30 d window
    "cust_prev_geo_ts_ms",  # most recent customer event with coordinates in the 30 d window
    "cust_prev_lat",
    "cust_prev_lon",
    "cust_merchant_count_30d",  # this customer's events at this merchant
    "cust_fraud_labels_30d",  # fraud labels on this customer's transactions known in the window
    *(f"merch_count_{w}" for w in WINDOWS_MS),
    *(f"merch_fraud_labels_{w}" for w in LABEL_WINDOWS_MS),
)


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    doc: str
    heavy_tailed: bool = False  # log1p before scaling for the linear model
    needs_history: bool = True  # False: computable from the request alone (degraded mode)


FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("amount", "Transaction amount.", heavy_tailed=True, needs_history=False),
    FeatureSpec(
        "hour_sin", "sin(2π·hour/24), hour of day in UTC with minutes as fraction.", needs_history=False
    ),
    FeatureSpec("hour_cos", "cos(2π·hour/24).", needs_history=False),
    FeatureSpec("is_night", "1 if the UTC hour is in [0, 6).", needs_history=False),
    FeatureSpec("is_weekend", "1 on Saturday or Sunday (UTC).", needs_history=False),
    FeatureSpec("channel_online", "1 for card-not-present (online) payments.", needs_history=False),
    FeatureSpec("channel_atm", "1 for ATM withdrawals.", needs_history=False),
    FeatureSpec("has_geo", "1 if the request carries lat/lon.", needs_history=False),
    FeatureSpec("cust_count_1h", "Customer's transactions in the last hour.", heavy_tailed=True),
    FeatureSpec("cust_count_1d", "Customer's transactions in the last day.", heavy_tailed=True),
    FeatureSpec("cust_count_7d", "Customer's transactions in the last 7 days.", heavy_tailed=True),
    FeatureSpec("cust_count_30d", "Customer's transactions in the last 30 days.", heavy_tailed=True),
    FeatureSpec("cust_sum_1h", "Customer's amount spent in the last hour.", heavy_tailed=True),
    FeatureSpec("cust_sum_1d", "Customer's amount spent in the last day.", heavy_tailed=True),
    FeatureSpec(
        "cust_avg_amount_7d", "Customer's mean amount over 7 days (0 without history).", heavy_tailed=True
    ),
    FeatureSpec(
        "cust_avg_amount_30d", "Customer's mean amount over 30 days (0 without history).", heavy_tailed=True
    ),
    FeatureSpec(
        "cust_amount_ratio_30d",
        "amount / customer's 30-day mean amount (1 without history).",
        heavy_tailed=True,
    ),
    FeatureSpec(
        "cust_secs_since_last",
        "Seconds since the customer's previous transaction, capped at 30 days (cap also means none).",
        heavy_tailed=True,
    ),
    FeatureSpec("cust_new_merchant", "1 if the customer has not paid this merchant in the last 30 days."),
    FeatureSpec(
        "cust_merchant_count_30d", "Customer's transactions at this merchant in 30 days.", heavy_tailed=True
    ),
    FeatureSpec(
        "geo_distance_km",
        "Great-circle km from the customer's previous located transaction (0 if either has no location).",
        heavy_tailed=True,
    ),
    FeatureSpec(
        "geo_speed_kmh",
        "geo_distance_km over the hours since that transaction (at least one minute); 0 without location.",
        heavy_tailed=True,
    ),
    FeatureSpec(
        "cust_fraud_labels_30d", "Fraud labels on this customer known in the last 30 days.", heavy_tailed=True
    ),
    FeatureSpec("merch_count_1h", "Merchant's transactions in the last hour.", heavy_tailed=True),
    FeatureSpec("merch_count_1d", "Merchant's transactions in the last day.", heavy_tailed=True),
    FeatureSpec("merch_count_7d", "Merchant's transactions in the last 7 days.", heavy_tailed=True),
    FeatureSpec("merch_count_30d", "Merchant's transactions in the last 30 days.", heavy_tailed=True),
    FeatureSpec(
        "merch_fraud_labels_7d", "Fraud labels at this merchant known in the last 7 days.", heavy_tailed=True
    ),
    FeatureSpec(
        "merch_fraud_labels_30d",
        "Fraud labels at this merchant known in the last 30 days.",
        heavy_tailed=True,
    ),
    FeatureSpec(
        "merch_fraud_rate_30d",
        "merch_fraud_labels_30d / max(merch_count_30d, 1): the merchant's recent known fraud rate.",
    ),
)

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
REQUEST_ONLY_FEATURES: tuple[str, ...] = tuple(f.name for f in FEATURES if not f.needs_history)
HEAVY_TAILED: tuple[bool, ...] = tuple(f.heavy_tailed for f in FEATURES)


def _fingerprint() -> str:
    text = "|".join([*FEATURE_NAMES, *RAW_NAMES, *(f"{k}={v}" for k, v in WINDOWS_MS.items())])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# A bundle trained on one contract is refused by a server running another.
FEATURE_VERSION = f"v1-{_fingerprint()}"
