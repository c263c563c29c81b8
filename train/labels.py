"""Export the labels that /v1/feedback stored in Redis, and merge them into a transaction file for retraining.

Where the labels live (serve_app/features/online.py, KeySchema): every scored transaction has a hash
`{prefix}tx:{transaction_id}`; a label adds the fields `label` ('0' | '1') and `labelled_at` (epoch ms).
Hashes without `label` are transactions nobody has labelled yet and are not exported. The hashes expire
with the rest of the store (KEY_TTL_MS after their last write), so export before they age out.

Retraining on the exported labels (`python -m train` wants a file with an `is_fraud` column):

    python -m train.labels export --redis-url redis://127.0.0.1:6380/0 --out data/labels.parquet
    python -m train.labels join --transactions data/transactions.parquet --labels data/labels.parquet \\
        --out data/relabelled.parquet
    python -m train --data data/relabelled.parquet --train-until 2026-02-15

`join` is a left join on transaction_id: an exported label replaces the file's `is_fraud`; rows without
one keep the file's value, or count as genuine (0) when the file has no `is_fraud` column (no chargeback
is the usual proxy for genuine). In pandas it is:

    labels = pd.read_parquet("data/labels.parquet").set_index("transaction_id")["is_fraud"]
    df["is_fraud"] = df["transaction_id"].map(labels).fillna(df["is_fraud"]).astype("int8")
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import redis

from serve_app.features.online import KeySchema
from serve_app.settings import get_settings

LABEL_COLUMNS = ("transaction_id", "is_fraud", "labelled_at")
SCAN_PAGE = 1000


class LabelExportError(RuntimeError):
    """The labels cannot be exported or merged; the message names the key, file or column."""


def _label_hashes(client: redis.Redis, keys: KeySchema) -> Iterator[list[str]]:
    """Transaction-record keys, a SCAN page at a time (SCAN never blocks the server like KEYS would)."""
    page: list[str] = []
    for key in client.scan_iter(match=f"{keys.transaction('')}*", count=SCAN_PAGE):
        page.append(key.decode() if isinstance(key, bytes) else str(key))
        if len(page) >= SCAN_PAGE:
            yield page
            page = []
    if page:
        yield page


def _decode(value: object) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def read_labels(client: redis.Redis, key_prefix: str = KeySchema().prefix) -> pd.DataFrame:
    """Every stored label as (transaction_id, is_fraud, labelled_at UTC), sorted by labelled_at then id."""
    keys = KeySchema(key_prefix)
    id_start = len(keys.transaction(""))
    ids: list[str] = []
    flags: list[int] = []
    times: list[int] = []
    for page in _label_hashes(client, keys):
        pipe = client.pipeline(transaction=False)
        for key in page:
            pipe.hmget(key, ["label", "labelled_at"])
        for key, (label, labelled_at) in zip(page, pipe.execute(), strict=True):
            flag, moment = _decode(label), _decode(labelled_at)
            if flag is None:  # scored, not labelled (or expired between SCAN and HMGET)
                continue
            if flag not in ("0", "1") or moment is None or not moment.lstrip("-").isdigit():
                raise LabelExportError(f"key {key!r}: label {flag!r} / labelled_at {moment!r} is not a label")
            ids.append(key[id_start:])
            flags.append(int(flag))
            times.append(int(moment))
    frame = pd.DataFrame(
        {
            "transaction_id": pd.Series(ids, dtype="string"),
            "is_fraud": np.asarray(flags, dtype=np.int8),
            "labelled_at": pd.to_datetime(np.asarray(times, dtype=np.int64), unit="ms", utc=True),
        }
    )
    return frame.sort_values(["labelled_at", "transaction_id"], kind="mergesort").reset_index(drop=True)


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """CSV (RFC 3339 timestamps with Z) or Parquet (timestamp[ms, UTC]), chosen by the file name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name.lower()
    if name.endswith(".parquet"):
        frame.to_parquet(path, index=False)
    elif name.endswith((".csv", ".csv.gz")):
        text = frame.copy()
        for column in text.columns:
            if isinstance(text[column].dtype, pd.DatetimeTZDtype):
                text[column] = text[column].dt.strftime("%Y-%m-%dT%H:%M:%S.%f").str[:-3] + "Z"
        text.to_csv(path, index=False)
    else:
        raise LabelExportError(f"unsupported output {path.name!r}: use .csv, .csv.gz or .parquet")


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise LabelExportError(f"{path} does not exist")
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            return pd.read_parquet(path)
        if name.endswith((".csv", ".csv.gz")):
            return pd.read_csv(path, dtype={"transaction_id": "string"}, low_memory=False)
    except (OSError, ValueError) as exc:
        raise LabelExportError(f"cannot read {path}: {exc}") from None
    raise LabelExportError(f"unsupported file {path.name!r}: use .csv, .csv.gz or .parquet")


def merge_labels(transactions: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """The transactions with `is_fraud` taken from `labels` where one exists (see the module docstring)."""
    for name, frame, needed in (
        ("transactions", transactions, ("transaction_id",)),
        ("labels", labels, LABEL_COLUMNS),
    ):
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise LabelExportError(f"{name} file is missing column(s) {missing}")
    flags = pd.to_numeric(labels["is_fraud"], errors="coerce")
    bad = ~flags.isin([0, 1]).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise LabelExportError(f"labels row {row + 1}: is_fraud {labels['is_fraud'].iloc[row]} is not 0 or 1")
    ids = labels["transaction_id"].astype(str)
    if ids.duplicated().any():
        raise LabelExportError(f"labels: transaction_id {ids[ids.duplicated()].iloc[0]!r} appears twice")
    known = pd.Series(flags.to_numpy(), index=ids.to_numpy())
    fallback = transactions["is_fraud"] if "is_fraud" in transactions.columns else 0
    merged = transactions.copy()
    merged["is_fraud"] = merged["transaction_id"].astype(str).map(known).fillna(fallback).astype("int8")
    return merged


def _redis_url(given: str | None) -> str:
    url = given or get_settings().redis_url
    if not url:
        raise LabelExportError("no Redis to read from: pass --redis-url or set FRAUD_REDIS_URL")
    return url


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.labels", description=__doc__.splitlines()[0])
    commands = p.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write the labels stored in Redis to CSV/Parquet")
    export.add_argument("--out", type=Path, required=True, help=".csv, .csv.gz or .parquet")
    export.add_argument("--redis-url", help="default: FRAUD_REDIS_URL")
    export.add_argument("--key-prefix", default=KeySchema().prefix, help="the store's key prefix")
    join = commands.add_parser("join", help="put exported labels into a transaction file's is_fraud")
    join.add_argument("--transactions", type=Path, required=True)
    join.add_argument("--labels", type=Path, required=True)
    join.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        if args.command == "export":
            client = redis.Redis.from_url(_redis_url(args.redis_url), socket_timeout=30)
            try:
                labels = read_labels(client, args.key_prefix)
            except redis.RedisError as exc:
                raise LabelExportError(f"cannot read labels from Redis: {exc}") from None
            finally:
                client.close()
            write_table(labels, args.out)
            frauds = int(labels["is_fraud"].sum())
            print(f"exported {len(labels)} labels ({frauds} fraud) to {args.out}")
        else:
            merged = merge_labels(_read_table(args.transactions), _read_table(args.labels))
            write_table(merged, args.out)
            print(f"wrote {len(merged)} transactions ({int(merged['is_fraud'].sum())} fraud) to {args.out}")
    except LabelExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
