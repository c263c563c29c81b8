"""Replay scheduling: batch cuts, label release times and order, stream selection, conflict checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadtest.replay_schedule import (
    LabelFeed,
    batches_conflict,
    label_release_counts,
    plan_batches,
    prepare_stream,
)
from serve_app.features.contract import DAY_MS, HOUR_MS

sorted_times = st.lists(st.integers(0, 20 * HOUR_MS), min_size=1, max_size=300).map(
    lambda v: np.sort(np.asarray(v, dtype=np.int64))
)
delays = st.sampled_from([0, 1, HOUR_MS, 3 * HOUR_MS, DAY_MS])


@settings(max_examples=200, deadline=None)
@given(ts=sorted_times, batch_size=st.integers(1, 50), delay=delays)
def test_batches_cover_the_stream_in_order_and_never_outlast_the_label_delay(
    ts: np.ndarray, batch_size: int, delay: int
) -> None:
    bounds = plan_batches(ts, batch_size, delay)
    assert [b[0] for b in bounds] == [0, *(b[1] for b in bounds[:-1])]
    assert bounds[-1][1] == len(ts)
    for start, stop in bounds:
        assert 0 < stop - start <= batch_size
        # No member's time reaches past the first member's label time...
        assert ts[stop - 1] <= ts[start] + delay
        # ...and a batch is only cut early because the next event would.
        if stop - start < batch_size and stop < len(ts):
            assert ts[stop] > ts[start] + delay


@settings(max_examples=200, deadline=None)
@given(ts=sorted_times, batch_size=st.integers(1, 50), delay=delays)
def test_a_label_is_released_before_the_first_batch_reaching_past_its_label_time(
    ts: np.ndarray, batch_size: int, delay: int
) -> None:
    bounds = plan_batches(ts, batch_size, delay)
    labelled_at = ts + delay
    released = label_release_counts(labelled_at, bounds, ts)
    assert np.all(np.diff(released) >= 0)
    batch_of = np.repeat(np.arange(len(bounds)), [b - a for a, b in bounds])
    for b, (_, stop) in enumerate(bounds):
        last = ts[stop - 1]
        newly = np.arange(released[b - 1] if b else 0, released[b])
        # Exactly the labels whose time the replay passes with this batch, in labelled_at order...
        assert np.all(labelled_at[newly] < last)
        assert np.all(labelled_at[released[b] :] >= last)
        # ...and every one of them belongs to a batch answered before this one.
        assert np.all(batch_of[newly] < b)


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), batch_size=st.integers(1, 40), delay=delays)
def test_label_counts_seen_online_equal_the_offline_definition(
    seed: int, batch_size: int, delay: int
) -> None:
    """Walk the schedule like the store does (labels filtered on labelled_at < t) and compare every
    transaction's known-fraud count with the offline one: fraud rows of the customer with ts + delay < t."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    # Coarse times make ties and label times landing exactly on event times common.
    ts = np.sort(rng.integers(0, 40, n).astype(np.int64) * (HOUR_MS // 2))
    cust = rng.integers(0, 5, n)
    fraud = rng.random(n) < 0.3
    bounds = plan_batches(ts, batch_size, delay)
    released = label_release_counts(ts + delay, bounds, ts)
    known = np.zeros(n, dtype=bool)  # labels the store holds
    seen_in_store = np.zeros(n, dtype=bool)
    for b, (start, stop) in enumerate(bounds):
        newly = np.arange(released[b - 1] if b else 0, released[b])
        assert seen_in_store[newly].all(), "a label went out before its transaction"
        known[newly] = True
        rows = np.arange(start, stop)[:, None]
        visible = fraud & (cust == cust[rows]) & (ts + delay < ts[rows])  # (batch, n): the offline rule
        np.testing.assert_array_equal((visible & known).sum(axis=1), visible.sum(axis=1))
        seen_in_store[start:stop] = True


def test_simultaneous_events_with_no_delay_go_in_one_batch_per_timestamp() -> None:
    ts = np.asarray([0, 0, 0, 5, 5, 9], dtype=np.int64)
    assert plan_batches(ts, 10, 0) == [(0, 3), (3, 5), (5, 6)]
    assert label_release_counts(ts, plan_batches(ts, 10, 0), ts).tolist() == [0, 3, 5]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        plan_batches(np.zeros(3, dtype=np.int64), 0, 0)
    with pytest.raises(ValueError, match="sorted"):
        plan_batches(np.asarray([2, 1], dtype=np.int64), 5, 0)
    with pytest.raises(ValueError, match="delay"):
        plan_batches(np.zeros(3, dtype=np.int64), 5, -1)


def _frame() -> pd.DataFrame:
    start = pd.Timestamp("2026-01-01", tz="UTC")
    return pd.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(6)],
            "timestamp": [start + pd.Timedelta(days=d) for d in (0, 1, 2, 3, 4, 5)],
            "customer_id": ["c1", "c2", "c1", "c3", "c2", "c1"],
            "merchant_id": ["m1", "m1", "m2", "m3", "m2", "m1"],
            "amount": [10.0, 20.0, 30.0, 40.0, 50.0, 60.0],
            "is_fraud": np.asarray([1, 0, 0, 1, 0, 1], dtype=np.int8),
        }
    )


def test_stream_selects_the_period_and_the_labels_falling_due_in_it() -> None:
    stream = prepare_stream(
        _frame(), 2 * DAY_MS, pd.Timestamp("2026-01-02", tz="UTC"), pd.Timestamp("2026-01-05", tz="UTC")
    )
    assert stream.frame["transaction_id"].tolist() == ["t1", "t2", "t3"]
    # Due in [Jan 2, Jan 5): t0 (Jan 3, scored before the replay) and t1 (Jan 4, replayed as row 0).
    assert stream.label_ids == ["t0", "t1"]
    assert stream.label_row.tolist() == [-1, 0]
    assert stream.label_fraud.tolist() == [True, False]
    assert np.all(np.diff(stream.labelled_at_ms) >= 0)


def test_without_until_labels_due_after_the_last_event_are_not_sent() -> None:
    stream = prepare_stream(_frame(), 2 * DAY_MS)
    assert len(stream.frame) == 6
    assert stream.label_ids == ["t0", "t1", "t2", "t3"]  # t3's label is due Jan 6, the last event's time


def test_label_feed_holds_labels_of_batches_still_in_flight() -> None:
    stream = prepare_stream(_frame(), DAY_MS)  # labels t0..t4, due one day after each
    row_batch = np.arange(6, dtype=np.int64)  # one batch per row
    feed = LabelFeed(stream, row_batch)
    scored = np.zeros(6, dtype=bool)
    scored[[0, 2]] = True
    first = feed.take(3, scored)  # t0, t1, t2 due; t1's batch has not answered
    assert [label["transaction_id"] for label in first] == ["t0", "t2"]
    assert first[0] == {"transaction_id": "t0", "is_fraud": True, "labelled_at": "2026-01-02T00:00:00.000Z"}
    scored[1] = True
    assert [label["transaction_id"] for label in feed.take(3, scored)] == ["t1"]
    scored[:] = True
    assert [label["transaction_id"] for label in feed.take(5, scored)] == ["t3", "t4"]
    assert feed.take(5, scored) == []


def test_batches_conflict_on_a_shared_customer_or_merchant() -> None:
    a = (frozenset({"c1", "c2"}), frozenset({"m1"}))
    assert batches_conflict(a, (frozenset({"c2"}), frozenset({"m9"})))
    assert batches_conflict(a, (frozenset({"c9"}), frozenset({"m1"})))
    assert not batches_conflict(a, (frozenset({"c3"}), frozenset({"m2"})))
