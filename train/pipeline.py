"""The training pipeline: time-based splits, features over the whole file, fit, holdout evaluation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from matplotlib.figure import Figure

from serve_app.bundle import ModelBundle
from serve_app.features.contract import DAY_MS
from serve_app.features.offline import compute_features
from train.data import describe_transactions
from train.evaluate import evaluate_scores, pr_auc, pr_curve_figure, roc_auc
from train.fit import FitConfig, fit_bundle

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
HOLDOUT_DAYS_FRACTION = 0.2
VALIDATION_DAYS_FRACTION = 0.15


@dataclass(frozen=True)
class Splits:
    """Row masks over the (sorted) frame plus the boundaries that produced them (UTC)."""

    train: BoolArray
    validation: BoolArray
    holdout: BoolArray
    train_from: pd.Timestamp
    validation_from: pd.Timestamp
    train_until: pd.Timestamp

    def describe(self) -> dict[str, Any]:
        return {
            "train_from": self.train_from.isoformat(),
            "validation_from": self.validation_from.isoformat(),
            "train_until": self.train_until.isoformat(),
            "train_rows": int(self.train.sum()),
            "validation_rows": int(self.validation.sum()),
            "holdout_rows": int(self.holdout.sum()),
        }


@dataclass(frozen=True)
class TrainOutcome:
    """A fitted bundle (summary filled in) with its holdout metrics and PR figure."""

    bundle: ModelBundle
    metrics: dict[str, float]
    params: dict[str, Any]
    figure: Figure
    data_summary: dict[str, Any]


def to_utc(value: str | pd.Timestamp) -> pd.Timestamp:
    """A CLI date or datetime as a UTC timestamp; naive values are read as UTC."""
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def split_by_time(
    timestamps: pd.Series,
    train_from: pd.Timestamp | None = None,
    train_until: pd.Timestamp | None = None,
) -> Splits:
    """Window [train_from, train_until) for fitting, its last 15 % of days for validation, and
    everything from train_until on as holdout. Defaults: the first day, and the last 20 % of days held out."""
    day = timestamps.dt.floor("D")
    days = pd.DatetimeIndex(day.unique()).sort_values()
    if train_until is None:
        if len(days) < 3:
            raise ValueError(f"need at least 3 days of data for the default split, got {len(days)}")
        train_until = days[len(days) - max(1, round(HOLDOUT_DAYS_FRACTION * len(days)))]
    if train_from is None:
        train_from = days[0]
    if train_from >= train_until:
        raise ValueError(
            f"--train-from {train_from.date()} must be before --train-until {train_until.date()}"
        )
    window_days = days[(days >= train_from.floor("D")) & (days < train_until)]
    if len(window_days) < 2:
        raise ValueError(
            f"the window {train_from} .. {train_until} covers {len(window_days)} day(s); need 2+"
        )
    n_validation = max(1, round(VALIDATION_DAYS_FRACTION * len(window_days)))
    validation_from = max(window_days[len(window_days) - n_validation], train_from)
    ts = timestamps.to_numpy()
    in_window = (timestamps >= train_from).to_numpy() & (timestamps < train_until).to_numpy()
    validation = in_window & (timestamps >= validation_from).to_numpy()
    holdout = (timestamps >= train_until).to_numpy()
    if not holdout.any():
        raise ValueError(f"no holdout rows at or after --train-until {train_until}; the data ends {ts.max()}")
    return Splits(
        train=in_window & ~validation,
        validation=validation,
        holdout=holdout,
        train_from=train_from,
        validation_from=validation_from,
        train_until=train_until,
    )


def features_for(df: pd.DataFrame, label_delay_days: float) -> FloatArray:
    """Point-in-time features of every row, over the whole file (history before the window counts)."""
    return compute_features(df, round(label_delay_days * DAY_MS))


def _require_labels(y: npt.NDArray[np.int8], mask: BoolArray, name: str) -> None:
    frauds = int(y[mask].sum())
    if frauds == 0 or frauds == int(mask.sum()):
        raise ValueError(
            f"the {name} split has {int(mask.sum())} rows and {frauds} frauds; it needs both classes"
        )


def train_and_evaluate(
    df: pd.DataFrame,
    features: FloatArray,
    splits: Splits,
    config: FitConfig | None = None,
    label_delay_days: float = 2.0,
) -> TrainOutcome:
    """Fit on the window, score the holdout with LR, XGBoost and the ensemble, and summarise it all."""
    config = config or FitConfig()
    y = df["is_fraud"].to_numpy().astype(np.int8)
    _require_labels(y, splits.train, "training")
    _require_labels(y, splits.validation, "validation")
    data_summary = {
        "file": describe_transactions(df),
        "train": describe_transactions(df[splits.train]),
        "validation": describe_transactions(df[splits.validation]),
        "holdout": describe_transactions(df[splits.holdout]),
        "label_delay_days": label_delay_days,
        **splits.describe(),
    }
    fitted = fit_bundle(
        features[splits.train], y[splits.train], features[splits.validation], y[splits.validation], config
    )
    bundle = fitted.bundle
    x_hold, y_hold = features[splits.holdout], y[splits.holdout]
    p_lr, p_xgb = bundle.lr.predict_proba(x_hold), bundle.xgb.predict_proba(x_hold)
    p = bundle.combine(p_lr, p_xgb)
    holdout = evaluate_scores(
        y_hold,
        p,
        review_threshold=bundle.review_threshold,
        decline_threshold=bundle.decline_threshold,
        customer_ids=df["customer_id"].to_numpy()[splits.holdout],
        timestamps=df["timestamp"][splits.holdout],
    )
    metrics = {f"holdout_{k}": v for k, v in holdout.items()}
    metrics |= {
        "holdout_pr_auc_lr": pr_auc(y_hold, p_lr),
        "holdout_pr_auc_xgb": pr_auc(y_hold, p_xgb),
        "holdout_roc_auc_lr": roc_auc(y_hold, p_lr),
        "holdout_roc_auc_xgb": roc_auc(y_hold, p_xgb),
    }
    metrics |= {f"val_{k}": v for k, v in fitted.validation.items()}
    params = {
        **config.model_dump(),
        **splits.describe(),
        "label_delay_days": label_delay_days,
        "feature_version": bundle.feature_version,
        "n_features": len(bundle.feature_names),
        "lr_weight": bundle.lr_weight,
        "review_threshold": bundle.review_threshold,
        "decline_threshold": bundle.decline_threshold,
        "xgb_best_iteration": fitted.best_iteration,
    }
    figure = pr_curve_figure(
        y_hold,
        {"ensemble": p, "xgboost": p_xgb, "logistic regression": p_lr},
        {"review": bundle.review_threshold, "decline": bundle.decline_threshold},
    )
    summary = {
        **bundle.summary,
        "data": data_summary,
        "metrics": {k: v for k, v in metrics.items() if math.isfinite(v)},
    }
    return TrainOutcome(
        bundle=dataclasses.replace(bundle, summary=summary),
        metrics=metrics,
        params=params,
        figure=figure,
        data_summary=data_summary,
    )
