"""Scoring metrics for fraud models (ranking, thresholded, per-day card precision) and the PR-curve figure."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int_]


def _both_classes(y: npt.ArrayLike) -> bool:
    return len(np.unique(np.asarray(y))) == 2


def roc_auc(y: npt.ArrayLike, p: npt.ArrayLike) -> float:
    """ROC-AUC, NaN when only one class is present (undefined rather than an exception)."""
    return float(roc_auc_score(y, p)) if _both_classes(y) else float("nan")


def pr_auc(y: npt.ArrayLike, p: npt.ArrayLike) -> float:
    """Average precision (the step-wise area under the PR curve), NaN without positives."""
    return float(average_precision_score(y, p)) if np.asarray(y).sum() > 0 else float("nan")


def at_threshold(y: npt.ArrayLike, p: npt.ArrayLike, threshold: float) -> dict[str, float]:
    """Precision, recall, F1 and flagged share when every score >= threshold is flagged."""
    truth = np.asarray(y).astype(bool)
    flagged = np.asarray(p, dtype=np.float64) >= threshold
    tp = float(np.sum(flagged & truth))
    n_flagged, n_pos = float(flagged.sum()), float(truth.sum())
    precision = tp / n_flagged if n_flagged else float("nan")
    recall = tp / n_pos if n_pos else float("nan")
    f1 = 2 * tp / (n_flagged + n_pos) if n_flagged + n_pos else float("nan")
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "flagged_rate": n_flagged / max(len(truth), 1),
    }


def recall_at_fpr(y: npt.ArrayLike, p: npt.ArrayLike, max_fpr: float = 0.01) -> float:
    """Best recall reachable by a threshold whose false-positive rate is at most `max_fpr`."""
    if not _both_classes(y):
        return float("nan")
    fpr, tpr, _ = roc_curve(y, p)
    return float(tpr[fpr <= max_fpr].max())


def card_precision_at_k(
    y: npt.ArrayLike, p: npt.ArrayLike, customer_ids: npt.ArrayLike, timestamps: pd.Series, k: int = 100
) -> float:
    """Mean over UTC days of: among the k customers with the highest max score that day, the share
    that had at least one fraud that day. Days with fewer than k customers use all of them; ties on
    the max score are broken by customer id so the result does not depend on row order."""
    ts = pd.Series(timestamps).reset_index(drop=True)
    if ts.dt.tz is None:
        raise ValueError("timestamps must be timezone-aware (UTC days are meant)")
    frame = pd.DataFrame(
        {
            "day": ts.dt.tz_convert("UTC").dt.floor("D"),
            "customer": np.asarray(customer_ids),
            "score": np.asarray(p, dtype=np.float64),
            "fraud": np.asarray(y).astype(np.int64),
        }
    )
    per_card = frame.groupby(["day", "customer"], sort=False).agg(
        score=("score", "max"), fraud=("fraud", "max")
    )
    per_card = per_card.reset_index().sort_values(
        ["day", "score", "customer"], ascending=[True, False, True], kind="mergesort"
    )
    top = per_card.groupby("day", sort=True).head(k)
    if top.empty:
        return float("nan")
    return float(top.groupby("day")["fraud"].mean().mean())


def evaluate_scores(
    y: npt.ArrayLike,
    p: npt.ArrayLike,
    *,
    review_threshold: float,
    decline_threshold: float,
    customer_ids: npt.ArrayLike,
    timestamps: pd.Series,
) -> dict[str, float]:
    """Every metric the project reports, as a flat name -> value mapping (NaN where undefined)."""
    metrics = {
        "roc_auc": roc_auc(y, p),
        "pr_auc": pr_auc(y, p),
        "recall_at_1pct_fpr": recall_at_fpr(y, p, 0.01),
        "card_precision_at_100": card_precision_at_k(y, p, customer_ids, timestamps, 100),
        "fraud_rate": float(np.mean(np.asarray(y))) if len(np.asarray(y)) else float("nan"),
        "rows": float(len(np.asarray(y))),
    }
    for name, threshold in (("review", review_threshold), ("decline", decline_threshold)):
        for key, value in at_threshold(y, p, threshold).items():
            metrics[f"{name}_{key}"] = value
    return metrics


def pr_curve_figure(
    y: npt.ArrayLike,
    scores: Mapping[str, npt.ArrayLike],
    thresholds: Mapping[str, float] | None = None,
    title: str = "Precision-recall (holdout)",
) -> Figure:
    """PR curves of several scorers on the same labels; `thresholds` marks operating points of the
    score named "ensemble" (or the first one). Uses the Agg canvas directly: no pyplot global state."""
    figure = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for name, p in scores.items():
        precision, recall, _ = precision_recall_curve(y, p)
        axes.step(recall, precision, where="post", label=f"{name} (AP {pr_auc(y, p):.3f})")
    if thresholds and scores:
        marked = "ensemble" if "ensemble" in scores else next(iter(scores))
        for label, threshold in thresholds.items():
            point = at_threshold(y, scores[marked], threshold)
            axes.plot(point["recall"], point["precision"], "o", label=f"{label} @ {threshold:.3g}")
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.02)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left", fontsize="small")
    figure.tight_layout()
    return figure
