"""`python -m train`: load or generate data, fit LR + XGBoost, evaluate on the holdout, register in MLflow."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from serve_app.settings import Settings

if TYPE_CHECKING:  # the heavy modules load inside main(), after the OpenMP setting below
    from train.pipeline import TrainOutcome
    from train.registry import RegisteredVersion

CHAMPION = "champion"  # train.registry.CHAMPION; repeated here so --help does not import MLflow
DEFAULT_EXPERIMENT = "fraud-scorer-training"
DEFAULT_DATA_FILE = "transactions.parquet"
STAGES = ("data", "features", "fit + evaluate", "register")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    settings = Settings()
    parser = argparse.ArgumentParser(
        prog="python -m train",
        description=(
            "Train the LR + XGBoost ensemble on a transaction file and register it as one MLflow model "
            f"version of {settings.model_name!r} (FRAUD_MODEL_NAME). Tracking store: MLFLOW_TRACKING_URI, "
            "else SQLite under FRAUD_DATA_DIR."
        ),
    )
    parser.add_argument(
        "--data",
        type=Path,
        help=f"CSV or Parquet of transactions with is_fraud; default: FRAUD_DATA_DIR/{DEFAULT_DATA_FILE}, "
        "generated on first use",
    )
    parser.add_argument(
        "--train-from", help="first day (or RFC 3339 time) of the training window; default: start"
    )
    parser.add_argument(
        "--train-until",
        help="end of the training window (exclusive); rows from here on are the holdout. "
        "Default: the last 20%% of days are held out",
    )
    parser.add_argument(
        "--label-delay-days",
        type=float,
        default=settings.label_delay_days,
        help="days until a fraud label is known, for label-based features (default %(default)s)",
    )
    parser.add_argument(
        "--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment (default %(default)s)"
    )
    parser.add_argument(
        "--alias",
        help=f"alias to point at the new version (e.g. challenger, or {CHAMPION} to promote). Without it the "
        f"version becomes {CHAMPION} only if no {CHAMPION} exists yet; otherwise it gets no alias",
    )
    args = parser.parse_args(argv)
    if args.label_delay_days < 0:
        parser.error("--label-delay-days must be >= 0")
    return args


def default_data_file(data_dir: Path) -> Path:
    """The generated default data set, created on first use and reused afterwards."""
    from train.generate import GeneratorConfig, generate, write_transactions

    path = data_dir / DEFAULT_DATA_FILE
    if not path.exists():
        write_transactions(generate(GeneratorConfig()), path)
    return path


def report(outcome: TrainOutcome, registered: RegisteredVersion) -> str:
    m, b = outcome.metrics, outcome.bundle
    alias = registered.alias or "none (a champion exists; pass --alias to set one)"
    return "\n".join(
        [
            f"registered model: {registered.name}  version: {registered.version}  alias: {alias}",
            f"run: {registered.run_id}",
            f"holdout rows: {int(m['holdout_rows'])}  fraud rate: {m['holdout_fraud_rate']:.3%}",
            f"holdout PR-AUC: ensemble {m['holdout_pr_auc']:.4f}  LR {m['holdout_pr_auc_lr']:.4f}  "
            f"XGBoost {m['holdout_pr_auc_xgb']:.4f}",
            f"holdout ROC-AUC: ensemble {m['holdout_roc_auc']:.4f}  LR {m['holdout_roc_auc_lr']:.4f}  "
            f"XGBoost {m['holdout_roc_auc_xgb']:.4f}",
            f"recall at 1% FPR: {m['holdout_recall_at_1pct_fpr']:.4f}  "
            f"card precision@100/day: {m['holdout_card_precision_at_100']:.4f}",
            f"review  >= {b.review_threshold:.4f}: precision {m['holdout_review_precision']:.4f}  "
            f"recall {m['holdout_review_recall']:.4f}  flagged {m['holdout_review_flagged_rate']:.3%}",
            f"decline >= {b.decline_threshold:.4f}: precision {m['holdout_decline_precision']:.4f}  "
            f"recall {m['holdout_decline_recall']:.4f}  flagged {m['holdout_decline_flagged_rate']:.3%}",
            f"ensemble weight of LR: {b.lr_weight:.1f}",
        ]
    )


def run(args: argparse.Namespace) -> tuple[TrainOutcome, RegisteredVersion]:
    from train.data import load_transactions
    from train.pipeline import features_for, split_by_time, to_utc, train_and_evaluate
    from train.registry import default_tracking_uri, log_and_register

    settings = Settings()
    with tqdm(total=len(STAGES), desc="train", unit="stage", file=sys.stderr) as bar:
        bar.set_postfix_str(STAGES[0])
        path = args.data if args.data is not None else default_data_file(settings.data_dir)
        df = load_transactions(path)
        bar.update()
        bar.set_postfix_str(STAGES[1])
        features = features_for(df, args.label_delay_days)
        splits = split_by_time(
            df["timestamp"],
            to_utc(args.train_from) if args.train_from else None,
            to_utc(args.train_until) if args.train_until else None,
        )
        bar.update()
        bar.set_postfix_str(STAGES[2])
        outcome = train_and_evaluate(df, features, splits, label_delay_days=args.label_delay_days)
        bar.update()
        bar.set_postfix_str(STAGES[3])
        registered = log_and_register(
            outcome.bundle,
            experiment=args.experiment,
            model_name=settings.model_name,
            tracking_uri=default_tracking_uri(),
            params={**outcome.params, "data_file": str(path)},
            metrics=outcome.metrics,
            figure=outcome.figure,
            data_summary=outcome.data_summary,
            alias=args.alias,
        )
        bar.update()
    return outcome, registered


def main(argv: Sequence[str] | None = None) -> int:
    # OpenMP threads that spin while waiting make 2-thread XGBoost ~6x slower when the 2 cores are shared
    # (measured under load); passive waiting costs nothing on an idle machine. libgomp reads this once,
    # when xgboost/sklearn load it, hence before the imports below.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from train.data import DataValidationError

    args = parse_args(argv)
    started = time.perf_counter()
    try:
        outcome, registered = run(args)
    except DataValidationError as exc:
        print(f"error: invalid data: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # bad dates, empty splits, a split without frauds: user input, not a bug
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report(outcome, registered))
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
