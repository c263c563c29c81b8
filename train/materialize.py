"""Bulk-load a history file into the Redis online store through the serving Lua script, so it starts warm.

Transactions and the file's fraud labels are replayed in event-time order: a row labelled fraud becomes a
label at ts + label delay, the moment the offline contract says it becomes known. So after loading, every
transaction's stored answer equals `offline.compute_raw_aggregates` for that row, and the store's windows
and label sets are exactly what serving would have built had it seen the history live. Rows labelled 0
send no label (a genuine verdict changes no feature). Re-running the load is harmless: every call is
idempotent by transaction_id.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from serve_app.features.contract import DAY_MS
from serve_app.features.offline import fraud_mask, request_columns_from_frame
from serve_app.features.online import (
    KeyedLabel,
    LabelEvent,
    OnlineStoreError,
    StoreEvent,
    SyncOnlineFeatureStore,
)
from serve_app.settings import get_settings
from train.data import DataValidationError, load_transactions

DEFAULT_BATCH_SIZE = 1000


@dataclass
class MaterializeSummary:
    """Counts of what the store answered, for the command's closing line and for tests."""

    transactions: Counter[str] = field(default_factory=Counter)  # new | dup | conflict
    labels: Counter[str] = field(default_factory=Counter)  # recorded | unchanged | corrected | unknown
    seconds: float = 0.0

    def line(self) -> str:
        n = sum(self.transactions.values())
        rate = n / self.seconds if self.seconds > 0 else 0.0
        return (
            f"transactions: {dict(self.transactions)}  labels: {dict(self.labels)}  "
            f"in {self.seconds:.1f} s ({rate:,.0f} transactions/s)"
        )


def event_stream(df: pd.DataFrame, label_delay_ms: int) -> Iterator[StoreEvent | KeyedLabel]:
    """Transactions at ts and fraud labels at ts + delay, merged in event time (a transaction first on ties,
    so a zero delay still finds its transaction). Ties among transactions keep the contract's id order."""
    if label_delay_ms < 0:
        raise ValueError(f"label delay must be >= 0 ms, got {label_delay_ms}")
    req = request_columns_from_frame(df)
    ts = req.ts_ms
    located = np.isfinite(req.lat) & np.isfinite(req.lon)
    txids = df["transaction_id"].astype(str).to_numpy(dtype=object)
    customers = df["customer_id"].astype(str).to_numpy(dtype=object)
    merchants = df["merchant_id"].astype(str).to_numpy(dtype=object)
    fraud_rows = np.flatnonzero(fraud_mask(df))
    rows = np.concatenate([np.arange(len(df)), fraud_rows])
    kind = np.concatenate([np.zeros(len(df), dtype=np.int64), np.ones(len(fraud_rows), dtype=np.int64)])
    when = np.concatenate([ts, ts[fraud_rows] + label_delay_ms])
    id_rank = pd.factorize(txids[rows], sort=True)[0]
    for k in np.lexsort((id_rank, kind, when)):
        i = int(rows[k])
        if kind[k] == 0:
            yield StoreEvent(
                transaction_id=txids[i],
                ts_ms=int(ts[i]),
                customer_id=customers[i],
                merchant_id=merchants[i],
                amount=float(req.amount[i]),
                lat=float(req.lat[i]) if located[i] else None,
                lon=float(req.lon[i]) if located[i] else None,
            )
        else:
            label = LabelEvent(txids[i], True, int(when[k]))
            yield KeyedLabel(label, customers[i], merchants[i])


def _chunks(items: Iterator[StoreEvent | KeyedLabel], size: int) -> Iterator[list[StoreEvent | KeyedLabel]]:
    chunk: list[StoreEvent | KeyedLabel] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def materialize(
    df: pd.DataFrame,
    redis_url: str,
    *,
    label_delay_ms: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    key_prefix: str = "fraud:",
    progress: bool = True,
) -> MaterializeSummary:
    """Replay the frame into the store, one pipeline of `batch_size` script calls at a time."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    summary = MaterializeSummary()
    total = len(df) + int(fraud_mask(df).sum())
    store = SyncOnlineFeatureStore(redis_url, key_prefix=key_prefix)
    started = time.perf_counter()
    try:
        with tqdm(total=total, desc="materialize", unit="event", disable=not progress) as bar:
            for chunk in _chunks(event_stream(df, label_delay_ms), batch_size):
                statuses = store.replay(chunk)
                for item, status in zip(chunk, statuses, strict=True):
                    (summary.labels if isinstance(item, KeyedLabel) else summary.transactions)[status] += 1
                bar.update(len(chunk))
    finally:
        store.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _parser() -> argparse.ArgumentParser:
    settings_delay = get_settings().label_delay_days
    p = argparse.ArgumentParser(
        prog="python -m train.materialize",
        description="Load a transaction history (CSV/Parquet) into the Redis online feature store.",
    )
    p.add_argument("--data", type=Path, required=True, help="transaction file (.csv, .csv.gz, .parquet)")
    p.add_argument("--redis-url", default=None, help="Redis URL (default: FRAUD_REDIS_URL)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="script calls per pipeline")
    p.add_argument(
        "--label-delay-days",
        type=float,
        default=settings_delay,
        help=f"days until a fraud label is known (default FRAUD_LABEL_DELAY_DAYS = {settings_delay:g})",
    )
    p.add_argument("--key-prefix", default="fraud:", help="the store's key prefix (as the server uses)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    redis_url = args.redis_url or get_settings().redis_url
    if not redis_url:
        print("error: no Redis to load: pass --redis-url or set FRAUD_REDIS_URL", file=sys.stderr)
        return 2
    if args.label_delay_days < 0 or args.batch_size < 1:
        print("error: --label-delay-days must be >= 0 and --batch-size >= 1", file=sys.stderr)
        return 2
    try:
        df = load_transactions(args.data)
        summary = materialize(
            df,
            redis_url,
            label_delay_ms=round(args.label_delay_days * DAY_MS),
            batch_size=args.batch_size,
            key_prefix=args.key_prefix,
            progress=not args.quiet,
        )
    except (DataValidationError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OnlineStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(summary.line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
