"""Fit LR and XGBoost, then choose the ensemble weight, calibration map and decision thresholds on validation.

Decision thresholds (on the calibrated validation probability; a row is flagged when p >= threshold):
- decline: the lowest threshold whose precision is >= DECLINE_PRECISION (0.9), i.e. the most recall that
  still keeps nine in ten declines fraudulent. If no threshold reaches it, the threshold with the highest
  precision (lowest such threshold on ties).
- review: the highest threshold that still flags >= REVIEW_RECALL (0.9) of the frauds, raised if needed
  until at most MAX_REVIEW_RATE (3 %) of all transactions are flagged (declines included), and never
  above the decline threshold. Review capacity wins over recall because analysts are the scarce resource.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import xgboost as xgb
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, precision_recall_curve
from sklearn.preprocessing import StandardScaler

from serve_app.bundle import LinearModel, ModelBundle, TreeModel
from serve_app.features.contract import FEATURE_NAMES, FEATURE_VERSION
from serve_app.features.derive import linear_transform

FloatArray = npt.NDArray[np.float64]
DECLINE_PRECISION = 0.9
REVIEW_RECALL = 0.9
MAX_REVIEW_RATE = 0.03
WEIGHT_GRID = tuple(round(0.1 * i, 1) for i in range(11))
# Isotonic maps are flat in places; a tiny tilt towards the raw score keeps the map strictly increasing,
# so calibration never merges distinct scores and ranking metrics equal the raw ensemble's.
CALIBRATION_TILT = 1e-3


class FitConfig(BaseModel):
    """Hyper-parameters of both models (the search space Ray Tune explores)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lr_c: float = Field(1.0, gt=0, description="Inverse L2 strength of the logistic regression")
    lr_max_iter: int = Field(2000, ge=50)
    lr_class_weight: Literal["balanced"] | PositiveFloat | None = Field(
        "balanced", description="'balanced', None (unweighted) or the weight of a fraud row"
    )
    xgb_max_depth: int = Field(6, ge=1, le=16)
    xgb_learning_rate: float = Field(0.2, gt=0, le=1)
    xgb_min_child_weight: float = Field(1.0, ge=0)
    xgb_subsample: float = Field(0.8, gt=0, le=1)
    xgb_colsample_bytree: float = Field(0.8, gt=0, le=1)
    xgb_reg_lambda: float = Field(1.0, ge=0)
    xgb_scale_pos_weight_multiplier: float = Field(1.0, gt=0, description="Times the neg/pos ratio")
    xgb_max_rounds: int = Field(400, ge=1)
    xgb_early_stopping_rounds: int = Field(30, ge=1)
    nthread: int = Field(2, ge=1)
    seed: int = 0


@dataclass(frozen=True)
class FitResult:
    """The bundle plus what was learnt on the way (for logging)."""

    bundle: ModelBundle
    best_iteration: int
    validation: dict[str, float]


def _check_xy(x: FloatArray, y: npt.ArrayLike, name: str) -> tuple[FloatArray, npt.NDArray[np.int8]]:
    matrix = np.asarray(x, dtype=np.float64)
    labels = np.asarray(y).astype(np.int8)
    if matrix.ndim != 2 or matrix.shape[1] != len(FEATURE_NAMES):
        raise ValueError(f"{name}: expected (n, {len(FEATURE_NAMES)}) features, got {matrix.shape}")
    if len(labels) != len(matrix):
        raise ValueError(f"{name}: {len(matrix)} feature rows but {len(labels)} labels")
    if not np.isfinite(matrix).all():
        bad = sorted({FEATURE_NAMES[j] for j in np.flatnonzero(~np.isfinite(matrix).all(axis=0))})
        raise ValueError(f"{name}: non-finite feature values in {bad}")
    positives = int(labels.sum())
    if positives == 0 or positives == len(labels):
        raise ValueError(f"{name}: needs both fraud and genuine rows, has {positives} of {len(labels)} fraud")
    return matrix, labels


def _class_weight(config: FitConfig) -> str | dict[int, float] | None:
    weight = config.lr_class_weight
    return {0: 1.0, 1: float(weight)} if isinstance(weight, float) else weight


def fit_linear(x: FloatArray, y: npt.ArrayLike, config: FitConfig) -> LinearModel:
    """Class-balanced L2 logistic regression on standardised `linear_transform(x)`."""
    z = linear_transform(x)
    scaler = StandardScaler().fit(z)
    model = LogisticRegression(
        C=config.lr_c, class_weight=_class_weight(config), solver="lbfgs", max_iter=config.lr_max_iter
    ).fit(scaler.transform(z), y)
    return LinearModel(
        coef=np.asarray(model.coef_[0], dtype=np.float64),
        intercept=float(model.intercept_[0]),
        mean=np.asarray(scaler.mean_, dtype=np.float64),
        scale=np.asarray(scaler.scale_, dtype=np.float64),
    )


def fit_xgboost(
    x: FloatArray,
    y: npt.ArrayLike,
    x_val: FloatArray,
    y_val: npt.ArrayLike,
    config: FitConfig,
    callbacks: Sequence[xgb.callback.TrainingCallback] = (),
) -> tuple[TreeModel, int]:
    """Hist gradient boosting, positives re-weighted by neg/pos, early-stopped on validation PR-AUC."""
    labels = np.asarray(y)
    positives = float(labels.sum())
    params: dict[str, Any] = {
        "objective": "binary:logistic",
        "eval_metric": "aucpr",
        "tree_method": "hist",
        "max_depth": config.xgb_max_depth,
        "eta": config.xgb_learning_rate,
        "min_child_weight": config.xgb_min_child_weight,
        "subsample": config.xgb_subsample,
        "colsample_bytree": config.xgb_colsample_bytree,
        "lambda": config.xgb_reg_lambda,
        "scale_pos_weight": config.xgb_scale_pos_weight_multiplier * (len(labels) - positives) / positives,
        "nthread": config.nthread,
        "seed": config.seed,
    }
    names = list(FEATURE_NAMES)
    train = xgb.DMatrix(x, label=labels, feature_names=names, nthread=config.nthread)
    valid = xgb.DMatrix(x_val, label=np.asarray(y_val), feature_names=names, nthread=config.nthread)
    booster = xgb.train(
        params,
        train,
        num_boost_round=config.xgb_max_rounds,
        evals=[(valid, "validation")],
        early_stopping_rounds=config.xgb_early_stopping_rounds,
        verbose_eval=False,
        callbacks=list(callbacks),  # e.g. Ray Tune's per-round reports
    )
    best = int(booster.best_iteration)
    # Keep only the trees up to the best round so the saved model is exactly what was validated.
    return TreeModel.from_booster(booster[: best + 1]), best


def choose_lr_weight(y_val: npt.ArrayLike, p_lr: FloatArray, p_xgb: FloatArray) -> float:
    """The weight w of LR in w*p_lr + (1-w)*p_xgb with the best validation PR-AUC (lowest w on ties)."""
    scores = [float(average_precision_score(y_val, w * p_lr + (1 - w) * p_xgb)) for w in WEIGHT_GRID]
    return WEIGHT_GRID[int(np.argmax(scores))]


def fit_calibration(y_val: npt.ArrayLike, raw: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Isotonic regression of the label on the raw ensemble score, as knots for np.interp over [0, 1]."""
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(raw, np.asarray(y_val, dtype=np.float64))
    knots_x = np.asarray(iso.X_thresholds_, dtype=np.float64)
    knots_y = np.asarray(iso.y_thresholds_, dtype=np.float64)
    if knots_x[0] > 0.0:
        knots_x, knots_y = np.r_[0.0, knots_x], np.r_[knots_y[0], knots_y]
    if knots_x[-1] < 1.0:
        knots_x, knots_y = np.r_[knots_x, 1.0], np.r_[knots_y, knots_y[-1]]
    knots_y = (1.0 - CALIBRATION_TILT) * knots_y + CALIBRATION_TILT * knots_x
    return knots_x, knots_y


def choose_thresholds(y_val: npt.ArrayLike, p_val: FloatArray) -> tuple[float, float]:
    """(review, decline) by the rule in this module's docstring."""
    labels = np.asarray(y_val).astype(bool)
    precision, recall, thresholds = precision_recall_curve(labels, p_val)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    feasible = precision >= DECLINE_PRECISION
    if feasible.any():
        decline = float(thresholds[np.flatnonzero(feasible)[0]])
    else:
        decline = float(thresholds[int(np.argmax(precision))])

    # recall is non-increasing in the threshold, so the last index with recall >= target is the highest.
    review_by_recall = float(thresholds[np.flatnonzero(recall >= REVIEW_RECALL)[-1]])
    sorted_scores = np.sort(np.asarray(p_val, dtype=np.float64))
    # Counts, not shares: 1 - 970/1000 is 0.030000000000000027 in floating point.
    flagged = len(sorted_scores) - np.searchsorted(sorted_scores, thresholds, side="left")
    within_capacity = np.flatnonzero(flagged <= MAX_REVIEW_RATE * len(sorted_scores))
    review_by_rate = float(thresholds[within_capacity[0]]) if len(within_capacity) else float(thresholds[-1])
    review = min(max(review_by_recall, review_by_rate), decline)
    return review, decline


def fit_bundle(
    x_train: FloatArray,
    y_train: npt.ArrayLike,
    x_val: FloatArray,
    y_val: npt.ArrayLike,
    config: FitConfig | None = None,
    summary: dict[str, Any] | None = None,
    callbacks: Sequence[xgb.callback.TrainingCallback] = (),
) -> FitResult:
    """Both models on train; weight, calibration and thresholds on validation; one bundle ("local")."""
    config = config or FitConfig()
    x_train, y_tr = _check_xy(x_train, y_train, "training split")
    x_val, y_va = _check_xy(x_val, y_val, "validation split")
    linear = fit_linear(x_train, y_tr, config)
    tree, best_iteration = fit_xgboost(x_train, y_tr, x_val, y_va, config, callbacks)
    p_lr, p_xgb = linear.predict_proba(x_val), tree.predict_proba(x_val)
    weight = choose_lr_weight(y_va, p_lr, p_xgb)
    raw = weight * p_lr + (1 - weight) * p_xgb
    cal_x, cal_y = fit_calibration(y_va, raw)
    calibrated = np.interp(raw, cal_x, cal_y)
    review, decline = choose_thresholds(y_va, calibrated)
    validation = {
        "pr_auc_lr": float(average_precision_score(y_va, p_lr)),
        "pr_auc_xgb": float(average_precision_score(y_va, p_xgb)),
        "pr_auc_ensemble": float(average_precision_score(y_va, calibrated)),
    }
    bundle = ModelBundle(
        version="local",
        feature_names=FEATURE_NAMES,
        feature_version=FEATURE_VERSION,
        lr=linear,
        xgb=tree,
        lr_weight=weight,
        calibration_x=cal_x,
        calibration_y=cal_y,
        review_threshold=review,
        decline_threshold=decline,
        history_fill=np.median(x_train, axis=0),
        summary={
            **(summary or {}),
            "created_at": datetime.now(UTC).isoformat(),
            "fit_config": config.model_dump(),
            "xgb_best_iteration": best_iteration,
            "validation": validation,
        },
    )
    return FitResult(bundle=bundle, best_iteration=best_iteration, validation=validation)
