"""Champion/challenger promotion: both bundles on the same recent holdout; `champion` moves only if better.

`python -m tune.promote [--margin 0.005] [--holdout-days N] [--data FILE]`. The holdout defaults to every
day after both models' training windows (train_until in the bundle summary), so neither model has seen it;
an explicit --holdout-days that reaches into a training window is refused rather than compared unfairly.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, ConfigDict

from serve_app.bundle import ModelBundle
from serve_app.model_store import ModelStoreError, load_registered_bundle, resolve_alias_version
from serve_app.settings import Settings
from train.evaluate import evaluate_scores
from train.registry import CHAMPION, default_tracking_uri, ensure_experiment

CHALLENGER = "challenger"
ROLE_TAG = "fraud.role"  # search | trial | refit | promotion
DEFAULT_EXPERIMENT = "fraud-scorer-promotion"
DEFAULT_MARGIN = 0.005
# Gains are differences of floats computed from the same labels; a margin met "exactly" must pass.
_TOLERANCE = 1e-12


class PromotionError(RuntimeError):
    """Promotion cannot compare fairly (no challenger, no holdout, overlapping windows, moved alias)."""


class HoldoutMetrics(BaseModel):
    """One model version's scores on the shared holdout, at its own decline threshold."""

    model_config = ConfigDict(frozen=True)

    version: str
    pr_auc: float
    roc_auc: float
    decline_recall: float
    decline_precision: float
    rows: int
    frauds: int


class PromotionDecision(BaseModel):
    model_config = ConfigDict(frozen=True)

    promote: bool
    reason: str
    pr_auc_gain: float | None = None
    decline_recall_change: float | None = None


def decide_promotion(
    challenger: HoldoutMetrics, champion: HoldoutMetrics | None, margin: float
) -> PromotionDecision:
    """Promote only if holdout PR-AUC improves by >= margin AND recall at the decline threshold does not
    drop (a better ranking that blocks fewer frauds at the operating point is not an improvement)."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if not (math.isfinite(challenger.pr_auc) and math.isfinite(challenger.decline_recall)):
        return PromotionDecision(
            promote=False, reason="the holdout gives the challenger no PR-AUC (no frauds?)"
        )
    if champion is None:
        return PromotionDecision(promote=True, reason="there is no champion yet")
    if champion.version == challenger.version:
        return PromotionDecision(
            promote=False, reason=f"version {challenger.version} is already the champion"
        )
    gain = challenger.pr_auc - champion.pr_auc
    recall_change = challenger.decline_recall - champion.decline_recall
    if not (math.isfinite(gain) and math.isfinite(recall_change)):
        return PromotionDecision(promote=False, reason="the champion's holdout metrics are undefined")
    found = {"pr_auc_gain": gain, "decline_recall_change": recall_change}
    if gain + _TOLERANCE < margin:
        reason = f"PR-AUC gain {gain:+.4f} is below the margin {margin:.4f}"
        return PromotionDecision(promote=False, reason=reason, **found)
    if recall_change < -_TOLERANCE:
        reason = (
            f"PR-AUC gains {gain:+.4f} but recall at the decline threshold drops "
            f"{champion.decline_recall:.4f} -> {challenger.decline_recall:.4f}"
        )
        return PromotionDecision(promote=False, reason=reason, **found)
    reason = (
        f"PR-AUC {champion.pr_auc:.4f} -> {challenger.pr_auc:.4f} ({gain:+.4f} >= {margin:.4f}); "
        f"decline recall {champion.decline_recall:.4f} -> {challenger.decline_recall:.4f}"
    )
    return PromotionDecision(promote=True, reason=reason, **found)


def training_end(bundle: ModelBundle) -> pd.Timestamp | None:
    """End of the bundle's training window (exclusive), as train.pipeline records it; None if unknown."""
    data = bundle.summary.get("data")
    value = data.get("train_until") if isinstance(data, dict) else None
    return pd.Timestamp(value).tz_convert("UTC") if isinstance(value, str) else None


def holdout_mask(
    timestamps: pd.Series, training_ends: Mapping[str, pd.Timestamp | None], holdout_days: float | None
) -> tuple[npt.NDArray[np.bool_], pd.Timestamp]:
    """Rows no model (version -> end of its training window) trained on: from the latest training end,
    or the last `holdout_days` if that does not reach into a known training window."""
    ends = dict(training_ends)
    last = timestamps.max()
    if holdout_days is not None:
        start = last - pd.Timedelta(days=holdout_days)
        for version, end in ends.items():
            if end is not None and end > start:
                raise PromotionError(
                    f"a {holdout_days:g}-day holdout starts {start.isoformat()}, inside version {version}'s "
                    f"training window (until {end.isoformat()}): the comparison would favour it; "
                    "use fewer days"
                )
    else:
        unknown = [v for v, end in ends.items() if end is None]
        if unknown:
            raise PromotionError(f"version(s) {unknown} record no training window; pass --holdout-days")
        start = max(end for end in ends.values() if end is not None)
    mask = (timestamps >= start).to_numpy()
    if not mask.any():
        raise PromotionError(
            f"no transactions from {start.isoformat()} on (the data ends {last.isoformat()})"
        )
    return mask, start


def evaluate_on_holdout(
    bundle: ModelBundle,
    x: npt.NDArray[np.float64],
    y: npt.ArrayLike,
    customer_ids: npt.ArrayLike,
    ts: pd.Series,
) -> HoldoutMetrics:
    scores = evaluate_scores(
        y,
        bundle.predict_proba(x),
        review_threshold=bundle.review_threshold,
        decline_threshold=bundle.decline_threshold,
        customer_ids=customer_ids,
        timestamps=ts,
    )
    return HoldoutMetrics(
        version=bundle.version,
        pr_auc=scores["pr_auc"],
        roc_auc=scores["roc_auc"],
        decline_recall=scores["decline_recall"],
        decline_precision=scores["decline_precision"],
        rows=len(ts),
        frauds=int(np.asarray(y).sum()),
    )


@dataclass(frozen=True)
class PromotionOutcome:
    decision: PromotionDecision
    challenger: HoldoutMetrics
    champion: HoldoutMetrics | None
    champion_before: str | None
    champion_after: str | None
    holdout_from: pd.Timestamp
    run_id: str


def _log_comparison(
    client: MlflowClient,
    experiment: str,
    tracking_uri: str,
    parent_run_id: str | None,
    decision: PromotionDecision,
    metrics: dict[str, HoldoutMetrics | None],
    params: dict[str, str],
) -> str:
    tags = {ROLE_TAG: "promotion", "decision": "promoted" if decision.promote else "kept"}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id  # set explicitly: no active-run nesting across calls
    run = client.create_run(ensure_experiment(experiment, tracking_uri), run_name="promotion", tags=tags)
    run_id = run.info.run_id
    for key, value in params.items():
        client.log_param(run_id, key, value)
    for role, m in metrics.items():
        if m is None:
            continue
        for name in ("pr_auc", "roc_auc", "decline_recall", "decline_precision"):
            score = float(getattr(m, name))
            if math.isfinite(score):
                client.log_metric(run_id, f"{role}_{name}", score)
    for name in ("pr_auc_gain", "decline_recall_change"):
        change = getattr(decision, name)
        if change is not None:
            client.log_metric(run_id, name, float(change))
    comparison = {role: m.model_dump() if m else None for role, m in metrics.items()}
    client.log_dict(run_id, {**comparison, "decision": decision.model_dump()}, "comparison.json")
    client.set_terminated(run_id)
    return run_id


def run_promotion(
    *,
    df: pd.DataFrame,
    features: npt.NDArray[np.float64],
    model_name: str,
    tracking_uri: str,
    margin: float,
    holdout_days: float | None,
    experiment: str = DEFAULT_EXPERIMENT,
    parent_run_id: str | None = None,
) -> PromotionOutcome:
    """Evaluate challenger and champion on one holdout, log the comparison, move `champion` if earned."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if resolve_alias_version(model_name, CHALLENGER, tracking_uri) is None:
        raise PromotionError(f"model {model_name!r} has no {CHALLENGER!r} alias; run `python -m tune` first")
    champion_before = resolve_alias_version(model_name, CHAMPION, tracking_uri)
    # A fresh cache: promotion must judge what the registry holds now, never a cached fallback.
    with tempfile.TemporaryDirectory(prefix="fraud-promote-") as cache:
        challenger = load_registered_bundle(model_name, CHALLENGER, tracking_uri, Path(cache))
        champion = (
            load_registered_bundle(model_name, CHAMPION, tracking_uri, Path(cache))
            if champion_before
            else None
        )
    if champion is not None and champion.version != champion_before:
        raise PromotionError(
            f"{CHAMPION} moved from {champion_before} to {champion.version} meanwhile; run again"
        )
    ends = {b.version: training_end(b) for b in (challenger, champion) if b is not None}
    mask, start = holdout_mask(df["timestamp"], ends, holdout_days)
    y = df["is_fraud"].to_numpy()[mask]
    if int(y.sum()) == 0:
        raise PromotionError(f"the holdout from {start.isoformat()} has no fraud rows: PR-AUC is undefined")
    args = (features[mask], y, df["customer_id"].to_numpy()[mask], df["timestamp"][mask])
    challenger_metrics = evaluate_on_holdout(challenger, *args)
    champion_metrics = evaluate_on_holdout(champion, *args) if champion is not None else None
    decision = decide_promotion(challenger_metrics, champion_metrics, margin)
    params = {
        "challenger_version": challenger.version,
        "champion_version": str(champion_before),
        "margin": str(margin),
        "holdout_from": start.isoformat(),
        "holdout_until": df["timestamp"].max().isoformat(),
        "holdout_rows": str(int(mask.sum())),
        "holdout_frauds": str(int(y.sum())),
    }
    metrics = {"challenger": challenger_metrics, "champion": champion_metrics}
    run_id = _log_comparison(client, experiment, tracking_uri, parent_run_id, decision, metrics, params)
    if decision.promote:
        # Compare-and-set: someone else may have moved the champion while we were evaluating.
        current = resolve_alias_version(model_name, CHAMPION, tracking_uri)
        if current != champion_before:
            client.set_tag(run_id, "decision", "aborted")
            raise PromotionError(
                f"{CHAMPION} moved from {champion_before} to {current} meanwhile; nothing changed"
            )
        client.set_registered_model_alias(model_name, CHAMPION, challenger.version)
        client.set_model_version_tag(model_name, challenger.version, "promotion_run_id", run_id)
        client.set_model_version_tag(model_name, challenger.version, "replaced_version", str(champion_before))
    return PromotionOutcome(
        decision=decision,
        challenger=challenger_metrics,
        champion=champion_metrics,
        champion_before=champion_before,
        champion_after=resolve_alias_version(model_name, CHAMPION, tracking_uri),
        holdout_from=start,
        run_id=run_id,
    )


def format_outcome(outcome: PromotionOutcome) -> str:
    """The comparison as a small table, then the decision and its reason."""
    ch, cp = outcome.challenger, outcome.champion
    header = (
        f"{'':20}{'challenger v' + ch.version:>16}{('champion v' + cp.version) if cp else 'no champion':>16}"
    )
    lines = [
        f"holdout from {outcome.holdout_from.isoformat()}: {ch.rows:,} rows, {ch.frauds:,} frauds",
        header,
    ]
    for label, name in (
        ("PR-AUC", "pr_auc"),
        ("ROC-AUC", "roc_auc"),
        ("decline recall", "decline_recall"),
        ("decline precision", "decline_precision"),
    ):
        other = f"{getattr(cp, name):>16.4f}" if cp else f"{'-':>16}"
        lines.append(f"{label:20}{getattr(ch, name):>16.4f}{other}")
    verdict = "PROMOTED" if outcome.decision.promote else "KEPT"
    lines.append(f"{verdict}: {outcome.decision.reason}")
    lines.append(
        f"champion: {outcome.champion_before} -> {outcome.champion_after}  (MLflow run {outcome.run_id})"
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    settings = Settings()
    parser = argparse.ArgumentParser(
        prog="python -m tune.promote",
        description=(
            f"Compare the {CHALLENGER!r} and {CHAMPION!r} versions of {settings.model_name!r} on the "
            f"same recent holdout and move {CHAMPION!r} to the challenger only if its PR-AUC is higher by "
            "at least the margin and its recall at the decline threshold is not lower. The comparison "
            "is logged to MLflow."
        ),
    )
    parser.add_argument(
        "--margin", type=float, default=DEFAULT_MARGIN, help="required PR-AUC gain (%(default)s)"
    )
    parser.add_argument(
        "--holdout-days",
        type=float,
        help="compare on the last N days; default: every day after both models' training windows",
    )
    parser.add_argument(
        "--data", type=Path, help="CSV/Parquet with is_fraud; default: the generated data set"
    )
    parser.add_argument(
        "--label-delay-days",
        type=float,
        default=settings.label_delay_days,
        help="for label features (%(default)s)",
    )
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment (%(default)s)")
    args = parser.parse_args(argv)
    if args.margin < 0:
        parser.error("--margin must be >= 0")
    if args.holdout_days is not None and args.holdout_days <= 0:
        parser.error("--holdout-days must be > 0")
    if args.label_delay_days < 0:
        parser.error("--label-delay-days must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from train.__main__ import default_data_file
    from train.data import DataValidationError, load_transactions
    from train.pipeline import features_for

    args = parse_args(argv)
    settings = Settings()
    try:
        df = load_transactions(args.data if args.data is not None else default_data_file(settings.data_dir))
        outcome = run_promotion(
            df=df,
            features=features_for(df, args.label_delay_days),
            model_name=settings.model_name,
            tracking_uri=default_tracking_uri(),
            margin=args.margin,
            holdout_days=args.holdout_days,
            experiment=args.experiment,
        )
    except DataValidationError as exc:
        print(f"error: invalid data: {exc}", file=sys.stderr)
        return 2
    except (PromotionError, ModelStoreError, ValueError) as exc:  # BundleError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MlflowException as exc:
        print(f"error: MLflow registry: {exc.message}", file=sys.stderr)
        return 1
    print(format_outcome(outcome))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
