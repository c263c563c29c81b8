"""Degraded-mode features: exact request-only columns, history columns from the bundle's fill values."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from serve_app.feature_fetcher import degraded_features, request_columns
from serve_app.features.contract import FEATURE_NAMES, REQUEST_ONLY_FEATURES
from serve_app.features.derive import request_features
from serve_app.schemas import Transaction


def _tx(i: int, **extra: Any) -> Transaction:
    fields = {"transaction_id": f"t{i}", "customer_id": "c1", "merchant_id": "m1", "amount": 10.0 * (i + 1)}
    return Transaction.model_validate(
        {**fields, "timestamp": datetime(2026, 1, 17, 3, 15, tzinfo=UTC), **extra}
    )


def test_request_only_columns_are_exact_and_history_comes_from_the_fill() -> None:
    txs = [_tx(0, channel="atm", lat=48.85, lon=2.35), _tx(1)]
    fill = np.arange(len(FEATURE_NAMES), dtype=np.float64) + 100.0
    x = degraded_features(request_columns(txs), fill)
    own = request_features(request_columns(txs))
    for j, name in enumerate(FEATURE_NAMES):
        if name in REQUEST_ONLY_FEATURES:
            np.testing.assert_array_equal(x[:, j], own[name])
        else:
            np.testing.assert_array_equal(x[:, j], [fill[j], fill[j]])
    assert x[0, FEATURE_NAMES.index("channel_atm")] == 1.0
    assert x[1, FEATURE_NAMES.index("has_geo")] == 0.0
    assert x[0, FEATURE_NAMES.index("is_night")] == 1.0  # 03:15 UTC


def test_without_a_fill_history_is_zero() -> None:
    x = degraded_features(request_columns([_tx(0)]), None)
    history = [j for j, n in enumerate(FEATURE_NAMES) if n not in REQUEST_ONLY_FEATURES]
    assert not x[0, history].any()


def test_a_fill_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="history_fill must have"):
        degraded_features(request_columns([_tx(0)]), np.zeros(3))
