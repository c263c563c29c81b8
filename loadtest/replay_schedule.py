"""Replay schedule: which transactions go in which batch, and which labels go out before each batch.

Pure functions and plain data only (no I/O), so the ordering guarantees below are unit-tested directly.

The stream is cut into batches in (timestamp, transaction_id) order. Before a batch goes out, every label
whose `labelled_at = ts + delay` lies before the batch's last event time is sent. That is exact, not
approximate: the store keeps labels on `labelled_at` and a transaction counts only labels with
labelled_at < its own time, so a label sent a little early stays invisible until it is due. What the store
cannot do is take a label for a transaction it has not recorded, so a batch never spans more than the label
delay (a label never falls due inside the batch that holds its own transaction).

Concurrency: a batch may be in flight together with earlier batches only if it shares no customer and no
merchant with them. Every feature of a transaction (windows and label counts) is keyed by its customer or
its merchant, so disjoint batches cannot see each other's writes and the answers equal a sequential replay.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from loadtest.replay_http import Payload, iso_ms

IntArray = npt.NDArray[np.int64]
Bounds = list[tuple[int, int]]
Entities = tuple[frozenset[str], frozenset[str]]  # customers, merchants of one batch


def plan_batches(ts_ms: IntArray, batch_size: int, label_delay_ms: int) -> Bounds:
    """[start, stop) index ranges over ts-sorted events: at most `batch_size` each, and no batch holds an
    event later than its first event's label time (ts + delay), for which that label would be due."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if label_delay_ms < 0:
        raise ValueError(f"label delay must be >= 0, got {label_delay_ms} ms")
    ts = np.asarray(ts_ms, dtype=np.int64)
    if len(ts) and np.any(np.diff(ts) < 0):
        raise ValueError("events must be sorted by timestamp")
    # The first event's label is due for events with ts > ts[start] + delay; those start a new batch.
    limit = np.searchsorted(ts, ts + np.int64(label_delay_ms), side="right")
    bounds: Bounds = []
    start = 0
    while start < len(ts):
        stop = int(min(start + batch_size, limit[start]))
        bounds.append((start, stop))
        start = stop
    return bounds


def label_release_counts(labelled_at_ms: IntArray, bounds: Bounds, ts_ms: IntArray) -> IntArray:
    """For each batch, how many labels (sorted by labelled_at) must be known before it is sent: those
    with labelled_at < the batch's last event time, i.e. the moment replay time passes ts + delay."""
    labelled_at = np.asarray(labelled_at_ms, dtype=np.int64)
    if len(labelled_at) and np.any(np.diff(labelled_at) < 0):
        raise ValueError("labels must be sorted by labelled_at")
    last_ts = np.asarray([ts_ms[stop - 1] for _, stop in bounds], dtype=np.int64)
    return np.searchsorted(labelled_at, last_ts, side="left").astype(np.int64)


def batches_conflict(a: Entities, b: Entities) -> bool:
    """True if two batches share a customer or a merchant (and so must not be in flight together)."""
    return not (a[0].isdisjoint(b[0]) and a[1].isdisjoint(b[1]))


@dataclass(frozen=True)
class ReplayStream:
    """Transactions in (timestamp, transaction_id) order and the labels to feed back, by labelled_at."""

    frame: pd.DataFrame  # validated rows, replay order
    ts_ms: IntArray
    label_ids: list[str]
    label_fraud: npt.NDArray[np.bool_]
    labelled_at_ms: IntArray
    label_row: IntArray  # row of the labelled transaction in `frame`; -1: scored before the replay


def _epoch_ms(stamps: pd.Series) -> IntArray:
    return stamps.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[ms]").view(np.int64)


def prepare_stream(
    data: pd.DataFrame,
    label_delay_ms: int,
    start: pd.Timestamp | None = None,
    until: pd.Timestamp | None = None,
) -> ReplayStream:
    """Rows with start <= timestamp < until, and labels of every row (also earlier ones) that fall due
    during the replay: start <= labelled_at < end, end being `until` or just after the last event."""
    ts_all = _epoch_ms(data["timestamp"])
    lo = int(start.value // 1_000_000) if start is not None else np.iinfo(np.int64).min
    hi = int(until.value // 1_000_000) if until is not None else np.iinfo(np.int64).max
    selected = (ts_all >= lo) & (ts_all < hi)
    frame = data.loc[selected].reset_index(drop=True)
    ts = ts_all[selected]
    end = hi if until is not None else (int(ts[-1]) + 1 if len(ts) else lo)
    labelled_at = ts_all + np.int64(label_delay_ms)
    due = (labelled_at >= lo) & (labelled_at < end) & (ts_all < hi)
    rows_in_replay = np.cumsum(selected) - 1  # data row -> frame row for selected rows
    label_rows = np.flatnonzero(due)  # already ordered by labelled_at: data is sorted by ts
    return ReplayStream(
        frame=frame,
        ts_ms=ts,
        label_ids=data["transaction_id"].to_numpy()[label_rows].astype(str).tolist(),
        label_fraud=data["is_fraud"].to_numpy()[label_rows] == 1,
        labelled_at_ms=labelled_at[label_rows],
        label_row=np.where(selected[label_rows], rows_in_replay[label_rows], -1).astype(np.int64),
    )


class LabelFeed:
    """Labels in labelled_at order; hands out those due whose transaction's batch has been answered."""

    def __init__(self, stream: ReplayStream, row_batch: IntArray) -> None:
        self._stream = stream
        # Batch holding each label's transaction; -1: scored before the replay started.
        self._owner = np.where(stream.label_row >= 0, row_batch[np.maximum(stream.label_row, 0)], -1)
        self._times = iso_ms(stream.labelled_at_ms)
        self._next = 0
        self._held = np.empty(0, dtype=np.int64)

    def take(self, due: int, scored: npt.NDArray[np.bool_]) -> list[Payload]:
        """Labels among the first `due` not handed out yet whose transaction is scored, in labelled_at order.

        The others belong to batches still in flight. Those batches share no customer or merchant with the
        batch about to go out, so their labels only matter to later batches, which wait for them anyway."""
        fresh = np.arange(self._next, max(due, self._next), dtype=np.int64)
        self._next = max(due, self._next)
        candidates = np.sort(np.concatenate([self._held, fresh]))
        owner = self._owner[candidates]
        ready = (owner < 0) | scored[np.maximum(owner, 0)]
        self._held = candidates[~ready]
        s = self._stream
        return [
            {
                "transaction_id": s.label_ids[i],
                "is_fraud": bool(s.label_fraud[i]),
                "labelled_at": self._times[i],
            }
            for i in candidates[ready].tolist()
        ]
