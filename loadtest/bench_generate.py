"""Benchmark of the data generator: time and rows/s for about one million transactions."""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from train.generate import GeneratorConfig, generate, write_transactions

# Measured on the default config (4000 customers, 60 days -> ~342k rows); sizes the customer count.
ROWS_PER_CUSTOMER_DAY = 1.43


def config_for(rows: int, days: int = 60, seed: int = 7) -> GeneratorConfig:
    """A config expected to produce about `rows` transactions, with the default customer:merchant ratio."""
    customers = max(50, round(rows / (days * ROWS_PER_CUSTOMER_DAY)))
    return GeneratorConfig(customers=customers, merchants=max(50, customers // 5), days=days, seed=seed)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_generate", description=__doc__)
    p.add_argument("--rows", type=int, default=1_000_000, help="approximate number of transactions")
    p.add_argument("--days", type=int, default=60, help="length of the period in days")
    p.add_argument("--write", choices=("none", "csv", "parquet"), default="none", help="also time writing")
    args = p.parse_args(argv)
    cfg = config_for(args.rows, args.days)
    t0 = time.perf_counter()
    df = generate(cfg)
    seconds = time.perf_counter() - t0
    print(f"{cfg}")
    print(f"generated {len(df):,} rows in {seconds:.2f} s: {len(df) / seconds:,.0f} rows/s")
    if args.write != "none":
        with tempfile.TemporaryDirectory() as tmp:
            t1 = time.perf_counter()
            write_transactions(df, Path(tmp) / f"bench.{args.write}")
            print(f"wrote {args.write} in {time.perf_counter() - t1:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
