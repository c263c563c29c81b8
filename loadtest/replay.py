"""`python -m loadtest.replay`: stream a labelled file through the live API with late feedback, then report.

How batches and labels are ordered so that live answers equal a sequential, point-in-time replay is
explained in loadtest/replay_schedule.py; the send loop is loadtest/replay_loop.py.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from loadtest.replay_http import ReplayClient, ReplayError
from loadtest.replay_loop import ReplayResult, run_replay
from loadtest.replay_schedule import ReplayStream, prepare_stream
from loadtest.report import build_report, format_report
from serve_app.features.contract import DAY_MS
from serve_app.schemas import MAX_BATCH
from serve_app.settings import get_settings
from train.data import DataValidationError, load_transactions


def _utc(value: str | None) -> pd.Timestamp | None:
    if value is None:
        return None
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    settings = get_settings()
    keys = settings.api_key_list()
    p = argparse.ArgumentParser(
        prog="python -m loadtest.replay",
        description="Replay a labelled transaction file through the live API, with delayed feedback.",
    )
    p.add_argument("--data", type=Path, required=True, help="labelled CSV/Parquet (train/data.py format)")
    p.add_argument("--url", required=True, help="base URL of the API, e.g. http://127.0.0.1:8000")
    p.add_argument("--api-key", default=keys[0] if keys else None, help="X-API-Key (default: FRAUD_API_KEYS)")
    p.add_argument("--from", dest="start", help="replay rows with timestamp >= this (date or RFC 3339, UTC)")
    p.add_argument("--until", help="replay rows with timestamp < this")
    p.add_argument("--label-delay-days", type=float, default=settings.label_delay_days, help="label delay")
    p.add_argument("--batch-size", type=int, default=MAX_BATCH, help=f"transactions per call, <= {MAX_BATCH}")
    p.add_argument("--concurrency", type=int, default=2, help="batches in flight (never sharing ids)")
    p.add_argument(
        "--degraded-retries",
        type=int,
        default=4,
        help="re-sends of a batch answered degraded (store trouble)",
    )
    p.add_argument("--report-from", help="report on rows with timestamp >= this (default: --from)")
    p.add_argument("--out", type=Path, required=True, help="scores CSV; the report goes next to it as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if not 1 <= args.batch_size <= MAX_BATCH:
        p.error(f"--batch-size must be within [1, {MAX_BATCH}]")
    if args.concurrency < 1:
        p.error("--concurrency must be >= 1")
    if args.degraded_retries < 0:
        p.error("--degraded-retries must be >= 0")
    if args.label_delay_days < 0:
        p.error("--label-delay-days must be >= 0")
    return args


def report_path(out: Path) -> Path:
    """Where the JSON report of a replay writing `out` goes: scores.csv -> scores.report.json."""
    return out.with_name(f"{out.stem}.report.json")


async def _replay(args: argparse.Namespace, stream: ReplayStream, delay_ms: int) -> ReplayResult:
    client = ReplayClient(args.url, args.api_key, connections=args.concurrency + 2)
    try:
        return await run_replay(
            stream,
            client,
            batch_size=args.batch_size,
            label_delay_ms=delay_ms,
            concurrency=args.concurrency,
            degraded_retries=args.degraded_retries,
            progress=not args.quiet,
        )
    finally:
        await client.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        start, until, report_from = _utc(args.start), _utc(args.until), _utc(args.report_from)
    except ValueError as exc:
        print(f"error: bad date: {exc}", file=sys.stderr)
        return 2
    delay_ms = round(args.label_delay_days * DAY_MS)
    try:
        data = load_transactions(args.data)
    except DataValidationError as exc:
        print(f"error: {args.data}: {exc}", file=sys.stderr)
        return 2
    stream = prepare_stream(data, delay_ms, start, until)
    if stream.frame.empty:
        print("error: no transactions in the chosen period", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(_replay(args, stream, delay_ms))
    except ReplayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result.scores.to_csv(args.out, index=False)
    report = build_report(
        result.scores, stream.frame, period_from=report_from or start, elapsed_s=result.elapsed_s
    )
    report_path(args.out).write_text(report.model_dump_json(indent=2), encoding="utf-8")
    print(format_report(report))
    print(
        f"{len(result.scores)} transactions in {result.batches} batches,"
        f" labels {dict(result.label_statuses)}, {result.retries} HTTP retries,"
        f" {result.resent_degraded} batches re-sent after a degraded answer;"
        f" scores: {args.out}, report: {report_path(args.out)}"
    )
    if result.label_statuses.get("unknown"):
        print("warning: some labels were for transactions the store never saw (not warmed?)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
