"""Metrics on hand-made examples whose answers are worked out in the comments."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from train.evaluate import (
    at_threshold,
    card_precision_at_k,
    evaluate_scores,
    pr_auc,
    pr_curve_figure,
    recall_at_fpr,
    roc_auc,
)


def test_ranking_metrics_by_hand() -> None:
    y = [1, 0, 1, 0]
    p = [0.9, 0.8, 0.7, 0.1]
    # AP: recall steps of 1/2 at precision 1/1 (0.9) and 2/3 (0.7).
    assert pr_auc(y, p) == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)
    # ROC-AUC: of the 4 (positive, negative) pairs only (0.7, 0.8) is mis-ordered.
    assert roc_auc(y, p) == pytest.approx(3 / 4)


def test_undefined_metrics_are_nan_not_errors() -> None:
    assert math.isnan(roc_auc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(pr_auc([0, 0], [0.1, 0.2]))
    assert math.isnan(recall_at_fpr([1, 1], [0.1, 0.2]))


def test_at_threshold_counts_scores_equal_to_threshold_as_flagged() -> None:
    y = [1, 0, 1, 0, 1]
    p = [0.9, 0.8, 0.4, 0.3, 0.1]
    # >= 0.4 flags rows 0, 1, 2: two of three are fraud, two of three frauds are caught.
    m = at_threshold(y, p, 0.4)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["flagged_rate"] == pytest.approx(3 / 5)
    nothing = at_threshold(y, p, 0.95)
    assert math.isnan(nothing["precision"])
    assert nothing["recall"] == 0.0


def test_recall_at_one_percent_fpr() -> None:
    negatives = np.arange(100) / 100.0  # 0.00 .. 0.99
    positives = np.array([0.995, 0.985, 0.5])
    y = np.r_[np.zeros(100), np.ones(3)]
    p = np.r_[negatives, positives]
    # Threshold 0.985 flags 0.995, 0.99 (one negative = 1 % FPR) and 0.985: 2 of 3 frauds.
    # Going lower to 0.98 would add a second negative (2 % FPR).
    assert recall_at_fpr(y, p, 0.01) == pytest.approx(2 / 3)
    assert recall_at_fpr(y, p, 0.0) == pytest.approx(1 / 3)


def _frame(rows: list[tuple[str, str, float, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.Series]:
    ts = pd.Series(pd.to_datetime([r[0] for r in rows], utc=True))
    customers = np.array([r[1] for r in rows], dtype=object)
    scores = np.array([r[2] for r in rows])
    labels = np.array([r[3] for r in rows])
    return labels, scores, customers, ts


def test_card_precision_at_100_per_day() -> None:
    rows: list[tuple[str, str, float, int]] = []
    # Day 1: 150 customers, customer i scores (150 - i) / 1000, so the top 100 are c000..c099.
    for i in range(150):
        rows.append(("2026-01-05T12:00:00Z", f"c{i:03d}", (150 - i) / 1000, 0))
    # c000..c019 also had a fraud that day, scored low: the card still counts (max score, any fraud).
    rows += [("2026-01-05T13:00:00Z", f"c{i:03d}", 0.0001, 1) for i in range(20)]
    # c120..c149 had frauds too, but they are outside the top 100.
    rows += [("2026-01-05T14:00:00Z", f"c{i:03d}", 0.0001, 1) for i in range(120, 150)]
    # Day 2 (UTC): four customers, one fraud. 23:30 at -02:00 is 01:30 UTC on the 6th.
    rows += [
        ("2026-01-06T09:00:00Z", "a", 0.9, 0),
        ("2026-01-06T09:00:00Z", "b", 0.8, 1),
        ("2026-01-05T23:30:00-02:00", "c", 0.7, 0),
        ("2026-01-06T10:00:00Z", "d", 0.1, 0),
    ]
    y, p, customers, ts = _frame(rows)
    # Day 1: 20 of the top 100 are fraud cards; day 2 has fewer than 100 cards, so all 4: 1 of 4.
    assert card_precision_at_k(y, p, customers, ts, k=100) == pytest.approx((20 / 100 + 1 / 4) / 2)
    # With k = 2: day 1 picks c000 and c001 (both fraud cards), day 2 picks a and b (one fraud).
    assert card_precision_at_k(y, p, customers, ts, k=2) == pytest.approx((2 / 2 + 1 / 2) / 2)


def test_card_precision_ties_break_by_customer_id_not_row_order() -> None:
    rows = [("2026-01-05T00:00:00Z", "b", 0.5, 1), ("2026-01-05T00:00:00Z", "a", 0.5, 0)]
    y, p, customers, ts = _frame(rows)
    assert card_precision_at_k(y, p, customers, ts, k=1) == 0.0
    assert card_precision_at_k(y[::-1], p[::-1], customers[::-1], ts[::-1], k=1) == 0.0


def test_card_precision_requires_timezone_aware_timestamps() -> None:
    naive = pd.Series(pd.to_datetime(["2026-01-05T00:00:00"]))
    with pytest.raises(ValueError, match="timezone"):
        card_precision_at_k([1], [0.5], ["a"], naive)


def test_evaluate_scores_reports_every_metric_consistently() -> None:
    y, p, customers, ts = _frame(
        [
            ("2026-01-05T00:00:00Z", "a", 0.9, 1),
            ("2026-01-05T01:00:00Z", "b", 0.6, 0),
            ("2026-01-05T02:00:00Z", "c", 0.4, 1),
            ("2026-01-05T03:00:00Z", "d", 0.2, 0),
        ]
    )
    m = evaluate_scores(
        y, p, review_threshold=0.3, decline_threshold=0.8, customer_ids=customers, timestamps=ts
    )
    assert m["pr_auc"] == pytest.approx(pr_auc(y, p))
    assert m["roc_auc"] == pytest.approx(roc_auc(y, p))
    assert m["decline_precision"] == 1.0
    assert m["decline_recall"] == 0.5
    assert m["review_precision"] == pytest.approx(2 / 3)
    assert m["review_recall"] == 1.0
    assert m["card_precision_at_100"] == pytest.approx(0.5)
    assert m["fraud_rate"] == 0.5
    assert m["rows"] == 4.0
    assert {"recall_at_1pct_fpr", "review_f1", "decline_f1", "review_flagged_rate"} <= set(m)


def test_pr_curve_figure_draws_each_scorer_and_renders_png() -> None:
    rng = np.random.default_rng(1)
    y = rng.random(500) < 0.1
    scores = {"ensemble": y * 0.5 + rng.random(500) * 0.6, "lr": rng.random(500)}
    figure = pr_curve_figure(y, scores, {"review": 0.4, "decline": 0.9})
    assert isinstance(figure, Figure)
    axes = figure.axes[0]
    labels = [str(line.get_label()) for line in axes.get_lines()]
    assert labels[0].startswith("ensemble (AP ")
    assert labels[1].startswith("lr (AP ")
    assert any(label.startswith("review @") for label in labels)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
