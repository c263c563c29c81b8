"""Replay request bodies: valid API transactions carrying the file's exact instants; retry pauses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loadtest.replay_http import TransactionPayloads, iso_ms, retry_delays
from serve_app.features.online import StoreEvent
from serve_app.schemas import Transaction


def test_iso_ms_keeps_every_millisecond() -> None:
    rng = np.random.default_rng(1)
    ms = 1_767_225_600_000 + rng.integers(0, 400 * 86_400_000, 2000)
    for value, text in zip(ms.tolist(), iso_ms(ms), strict=True):
        assert text.endswith("Z")
        assert pd.Timestamp(text).value // 1_000_000 == value


def test_bodies_are_valid_transactions_and_leave_out_missing_optionals() -> None:
    frame = pd.DataFrame(
        {
            "transaction_id": ["a1", "a2"],
            "timestamp": pd.to_datetime([1_767_225_600_123, 1_767_225_601_999], unit="ms", utc=True),
            "customer_id": ["c1", "c2"],
            "merchant_id": ["m1", "m2"],
            "amount": [12.34, 0.01],
            "currency": pd.array(["EUR", pd.NA], dtype="string"),
            "merchant_category": pd.array([pd.NA, "grocery"], dtype="string"),
            "channel": pd.array(["online", pd.NA], dtype="string"),
            "lat": [48.8566, np.nan],
            "lon": [2.3522, np.nan],
        }
    )
    ts = np.asarray([1_767_225_600_123, 1_767_225_601_999], dtype=np.int64)
    first, second = TransactionPayloads(frame, ts).batch(0, 2)
    assert set(first) == {"transaction_id", "timestamp", "customer_id", "merchant_id", "amount"} | {
        "currency",
        "channel",
        "lat",
        "lon",
    }
    assert "lat" not in second
    assert "currency" not in second
    assert second["merchant_category"] == "grocery"
    for body, expected_ms in zip((first, second), ts.tolist(), strict=True):
        parsed = Transaction.model_validate(body)  # the API's own request model
        assert StoreEvent.from_transaction(parsed).ts_ms == expected_ms
        assert parsed.amount == body["amount"]


@pytest.mark.parametrize(
    ("attempts", "expected"), [(1, []), (4, [0.5, 1.0, 2.0]), (6, [0.5, 1.0, 2.0, 3.0, 3.0])]
)
def test_retry_pauses_double_up_to_a_cap(attempts: int, expected: list[float]) -> None:
    assert retry_delays(attempts, 0.5, cap_s=3.0) == expected
