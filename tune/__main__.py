"""`python -m tune`: Ray Tune search over the bundle's hyper-parameters, a challenger, its promotion."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serve_app.settings import Settings

if TYPE_CHECKING:  # the heavy modules load inside main(), after the OpenMP setting there
    from tune.runner import SearchOutcome
    from tune.space import TuneJobConfig

DEFAULT_CONFIG_PATH = Path("configs/tune.yaml")
_REPO_CONFIG = Path(__file__).resolve().parents[1] / DEFAULT_CONFIG_PATH


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tune",
        description=(
            "Search LR + XGBoost hyper-parameters with Ray Tune (ASHA stops weak trials early), log "
            "one MLflow parent run with every trial as a child run, refit the best configuration as "
            "`python -m train` would, register it with the alias 'challenger', and promote it to 'champion' "
            "if it beats the champion on the holdout. Tracking store: MLFLOW_TRACKING_URI, else SQLite "
            "under FRAUD_DATA_DIR."
        ),
    )
    parser.add_argument(
        "--config",
        type=Path,
        help=f"YAML job config (default: {DEFAULT_CONFIG_PATH}, else the repository's copy)",
    )
    parser.add_argument("--num-samples", type=int, help="number of trials (overrides num_samples)")
    parser.add_argument("--max-concurrent", type=int, help="trials at once (overrides max_concurrent)")
    parser.add_argument(
        "--data",
        type=Path,
        help="CSV/Parquet with is_fraud (overrides data); default: the generated data set",
    )
    parser.add_argument(
        "--no-promote", action="store_true", help="register the challenger, do not promote it"
    )
    parser.add_argument(
        "--ray-address",
        default=os.environ.get("RAY_ADDRESS"),
        help="existing Ray cluster to use (default: RAY_ADDRESS, else a new local Ray on this machine)",
    )
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all of this machine)")
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> TuneJobConfig:
    """The YAML job config with the command line's overrides applied and validated like the file."""
    from tune.space import load_config, parse_config

    if args.config is not None:
        job = load_config(args.config)
    elif DEFAULT_CONFIG_PATH.is_file():
        job = load_config(DEFAULT_CONFIG_PATH)
    else:
        job = load_config(_REPO_CONFIG)
    overrides: dict[str, Any] = {}
    if args.num_samples is not None:
        overrides["num_samples"] = args.num_samples
    if args.max_concurrent is not None:
        overrides["max_concurrent"] = args.max_concurrent
    if args.data is not None:
        overrides["data"] = args.data
    if args.no_promote:
        overrides["promotion"] = {**job.promotion.model_dump(), "enabled": False}
    return parse_config({**job.model_dump(exclude_unset=True), **overrides}, "(config + command line)")


def report(outcome: SearchOutcome, job: TuneJobConfig) -> str:
    """What the search found, the challenger it registered and the promotion verdict."""
    from tune.promote import format_outcome
    from tune.trainable import METRIC

    s, plan = outcome.summary, outcome.plan
    baseline = f"{s.baseline_val_pr_auc:.4f}" if s.baseline_val_pr_auc is not None else "not run"
    m = outcome.challenger_metrics
    best = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(s.best_config.items())
    )
    lines = [
        f"search: {s.trials} trials ({s.finished} finished, {s.stopped_early} stopped early, "
        f"{s.errored} failed) in {outcome.search_seconds:.0f} s; {plan.cpus_per_trial:g} CPU x "
        f"{plan.max_concurrent} trials at once, XGBoost nthread {plan.nthread}",
        f"best validation PR-AUC {float(s.best_metrics[METRIC]):.4f} (FitConfig defaults: {baseline})",
        f"best config: {best}",
        f"challenger: {outcome.challenger.name} version {outcome.challenger.version}, holdout PR-AUC "
        f"{m.get('holdout_pr_auc', float('nan')):.4f}, "
        f"decline recall {m.get('holdout_decline_recall', float('nan')):.4f}",
    ]
    if outcome.promotion is not None:
        lines.append(format_outcome(outcome.promotion))
    elif not job.promotion.enabled:
        lines.append("promotion skipped (--no-promote / promotion.enabled: false)")
    lines.append(f"MLflow: experiment {job.experiment_name!r}, parent run {outcome.parent_run_id}")
    lines.append(f"done in {outcome.total_seconds:.0f} s")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    # As in `python -m train`: spinning OpenMP waits make multi-thread XGBoost (the refit) several times
    # slower on a shared small machine. libgomp reads this once, when xgboost loads, hence the late imports;
    # Ray workers inherit it from this process.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import ray
    from mlflow.exceptions import MlflowException

    from train.__main__ import default_data_file
    from train.data import DataValidationError, load_transactions
    from train.registry import default_tracking_uri
    from tune.promote import PromotionError
    from tune.runner import SearchError, run_search
    from tune.space import ConfigError

    args = parse_args(argv)
    try:
        job = resolve_config(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = Settings()
    started = time.perf_counter()
    try:
        path = job.data if job.data is not None else default_data_file(settings.data_dir)
        df = load_transactions(path)
    except DataValidationError as exc:
        print(f"error: invalid data: {exc}", file=sys.stderr)
        return 2
    # "local" starts a private Ray even if another one runs on this machine (never `ray stop` others).
    ray.init(
        address=args.ray_address or "local",
        num_cpus=args.num_cpus if not args.ray_address else None,
        include_dashboard=False,
        configure_logging=False,
    )
    try:
        outcome = run_search(
            job,
            df,
            tracking_uri=default_tracking_uri(),
            model_name=settings.model_name,
            storage=settings.data_dir / "ray_results",
            label_delay_days=job.label_delay_days
            if job.label_delay_days is not None
            else settings.label_delay_days,
            data_file=str(path),
            promote=job.promotion.enabled,
        )
    except (SearchError, PromotionError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MlflowException as exc:
        print(f"error: MLflow: {exc.message}", file=sys.stderr)
        return 1
    finally:
        ray.shutdown()
    print(report(outcome, job))
    print(f"wall time including data and Ray start: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
