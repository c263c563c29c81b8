"""Detection report: metrics against independent computations, per-day card precision, errors, JSON."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from loadtest.report import (
    DetectionReport,
    ReportError,
    build_report,
    card_precision_per_day,
    format_report,
    join_scores_with_labels,
)

DAY0 = pd.Timestamp("2026-03-01", tz="UTC")


def _stream(n: int = 600, seed: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Labels and live-looking scores over three days; scores lean towards fraud."""
    rng = np.random.default_rng(seed)
    fraud = (rng.random(n) < 0.1).astype(np.int8)
    labels = pd.DataFrame(
        {
            "transaction_id": [f"tx{i:05d}" for i in range(n)],
            "timestamp": DAY0 + pd.to_timedelta(np.sort(rng.integers(0, 3 * 86_400_000, n)), unit="ms"),
            "customer_id": [f"c{k}" for k in rng.integers(0, 150, n)],
            "is_fraud": fraud,
        }
    )
    p = np.clip(0.15 + 0.5 * fraud + rng.normal(0, 0.2, n), 0.0, 1.0)
    decision = np.where(p >= 0.7, "decline", np.where(p >= 0.45, "review", "approve"))
    scores = pd.DataFrame(
        {
            "transaction_id": labels["transaction_id"].to_numpy()[::-1],  # any order
            "fraud_probability": p[::-1],
            "decision": decision[::-1],
            "degraded": (rng.random(n) < 0.05)[::-1],
        }
    )
    return scores, labels


def test_ranking_metrics_and_rates_match_direct_computations() -> None:
    scores, labels = _stream()
    report = build_report(scores, labels, elapsed_s=2.0)
    joined = scores.merge(labels, on="transaction_id")
    y, p = joined["is_fraud"], joined["fraud_probability"]
    assert report.transactions == len(labels)
    assert report.frauds == int(labels["is_fraud"].sum())
    assert report.roc_auc == pytest.approx(roc_auc_score(y, p))
    assert report.pr_auc == pytest.approx(average_precision_score(y, p))
    assert report.review_rate == pytest.approx(np.mean(joined["decision"] == "review"))
    assert report.decline_rate == pytest.approx(np.mean(joined["decision"] == "decline"))
    assert report.degraded_share == pytest.approx(joined["degraded"].mean())
    assert report.throughput_tps == pytest.approx(len(scores) / 2.0)


def test_precision_and_recall_per_decision_count_flagged_frauds() -> None:
    scores, labels = _stream()
    report = build_report(scores, labels)
    joined = scores.merge(labels, on="transaction_id")
    fraud = joined["is_fraud"] == 1
    for quality, flagged in (
        (report.decline, joined["decision"] == "decline"),
        (report.review_or_decline, joined["decision"].isin(["review", "decline"])),
    ):
        assert quality.precision == pytest.approx((flagged & fraud).sum() / flagged.sum())
        assert quality.recall == pytest.approx((flagged & fraud).sum() / fraud.sum())
        assert quality.flagged_rate == pytest.approx(flagged.mean())


def test_card_precision_takes_the_top_100_cards_of_each_day() -> None:
    # Day 1: 150 cards; the 100 highest-scored hold 30 frauds, the other 50 hold 20 (ignored).
    # Day 2: 10 cards, 4 with a fraud: fewer than 100 cards, so all of them count.
    rows = []
    for c in range(150):
        rows.append((f"a{c}", DAY0 + pd.Timedelta(hours=1), f"c{c:03d}", 1.0 - c / 1000, int(c % 10 < 3)))
    for c in range(10):
        rows.append((f"b{c}", DAY0 + pd.Timedelta(days=1, hours=2), f"c{c:03d}", 0.5, int(c < 4)))
    frame = pd.DataFrame(rows, columns=["transaction_id", "timestamp", "customer_id", "p", "is_fraud"])
    scores = pd.DataFrame(
        {
            "transaction_id": frame["transaction_id"],
            "fraud_probability": frame["p"],
            "decision": "approve",
            "degraded": False,
        }
    )
    per_day = card_precision_per_day(join_scores_with_labels(scores, frame))
    assert per_day == {"2026-03-01": pytest.approx(30 / 100), "2026-03-02": pytest.approx(4 / 10)}
    report = build_report(scores, frame)
    assert report.card_precision_at_100_mean == pytest.approx((30 / 100 + 4 / 10) / 2)


def test_period_from_keeps_only_later_rows_but_throughput_counts_every_score() -> None:
    scores, labels = _stream()
    cut = DAY0 + pd.Timedelta(days=2)
    report = build_report(scores, labels, period_from=cut, elapsed_s=4.0)
    assert report.transactions == int((labels["timestamp"] >= cut).sum())
    assert list(report.card_precision_at_100_per_day) == ["2026-03-03"]
    assert pd.Timestamp(report.period_start) >= cut
    assert report.throughput_tps == pytest.approx(len(scores) / 4.0)


def test_undefined_metrics_are_null_in_json() -> None:
    scores, labels = _stream()
    labels = labels.assign(is_fraud=np.zeros(len(labels), dtype=np.int8))
    report = build_report(scores, labels)
    data = json.loads(report.model_dump_json())
    assert data["pr_auc"] is None
    assert data["roc_auc"] is None
    assert data["decline"]["recall"] is None
    assert DetectionReport.model_validate(data) == report
    text = format_report(report)
    assert "PR-AUC            n/a" in text
    assert "2026-03-01" in text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.drop(columns="degraded"), "missing column"),
        (lambda s: s.assign(decision="maybe"), "decision 'maybe'"),
        (lambda s: s.assign(fraud_probability=1.5), "fraud_probability 1.5"),
        (lambda s: pd.concat([s, s.iloc[:1]]), "more than once"),
        (lambda s: s.assign(transaction_id=s["transaction_id"].where(s.index != 0, "ghost")), "no label"),
    ],
)
def test_bad_scores_are_refused_with_a_clear_message(
    change: Callable[[pd.DataFrame], pd.DataFrame], message: str
) -> None:
    scores, labels = _stream(50)
    with pytest.raises(ReportError, match=message):
        build_report(change(scores), labels)
