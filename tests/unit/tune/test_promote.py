"""The promotion rule: PR-AUC must improve by the margin and recall at the decline threshold must hold."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tune.promote import HoldoutMetrics, PromotionError, decide_promotion, holdout_mask


def _metrics(version: str, pr_auc: float, decline_recall: float) -> HoldoutMetrics:
    return HoldoutMetrics(
        version=version,
        pr_auc=pr_auc,
        roc_auc=0.95,
        decline_recall=decline_recall,
        decline_precision=0.9,
        rows=10_000,
        frauds=70,
    )


CHAMPION = _metrics("1", pr_auc=0.80, decline_recall=0.50)


def test_refuses_a_worse_challenger() -> None:
    decision = decide_promotion(_metrics("2", 0.75, 0.55), CHAMPION, margin=0.005)
    assert not decision.promote
    assert "below the margin" in decision.reason
    assert decision.pr_auc_gain == pytest.approx(-0.05)


def test_refuses_a_gain_smaller_than_the_margin() -> None:
    decision = decide_promotion(_metrics("2", 0.804, 0.60), CHAMPION, margin=0.005)
    assert not decision.promote
    assert "below the margin" in decision.reason


def test_refuses_better_pr_auc_with_worse_recall_at_the_decline_threshold() -> None:
    decision = decide_promotion(_metrics("2", 0.90, 0.49), CHAMPION, margin=0.005)
    assert not decision.promote
    assert "recall at the decline threshold drops" in decision.reason
    assert decision.decline_recall_change == pytest.approx(-0.01)


def test_accepts_better_pr_auc_with_recall_not_worse() -> None:
    decision = decide_promotion(_metrics("2", 0.82, 0.50), CHAMPION, margin=0.005)
    assert decision.promote
    assert decision.pr_auc_gain == pytest.approx(0.02)
    assert decision.decline_recall_change == pytest.approx(0.0)


def test_a_gain_exactly_at_the_margin_is_enough() -> None:
    challenger = _metrics("2", CHAMPION.pr_auc + 0.01, 0.50)
    assert decide_promotion(challenger, CHAMPION, margin=challenger.pr_auc - CHAMPION.pr_auc).promote


def test_zero_margin_still_refuses_a_loss() -> None:
    assert not decide_promotion(_metrics("2", 0.7999, 0.9), CHAMPION, margin=0.0).promote


def test_promotes_when_there_is_no_champion() -> None:
    decision = decide_promotion(_metrics("1", 0.3, 0.1), None, margin=0.005)
    assert decision.promote
    assert "no champion" in decision.reason


def test_refuses_when_challenger_is_already_champion() -> None:
    assert not decide_promotion(_metrics("1", 0.9, 0.9), CHAMPION, margin=0.005).promote


def test_refuses_undefined_metrics() -> None:
    decision = decide_promotion(_metrics("2", math.nan, math.nan), CHAMPION, margin=0.005)
    assert not decision.promote
    assert "no PR-AUC" in decision.reason


def test_negative_margin_is_an_error() -> None:
    with pytest.raises(ValueError, match="margin"):
        decide_promotion(_metrics("2", 0.9, 0.9), CHAMPION, margin=-0.1)


def _utc(day: str) -> pd.Timestamp:
    return pd.Timestamp(day, tz="UTC")


def _days(n: int) -> pd.Series:
    return pd.Series(pd.date_range("2026-01-01", periods=n * 24, freq="h", tz="UTC"))


def test_holdout_starts_after_both_training_windows() -> None:
    ts = _days(10)
    ends = {"1": _utc("2026-01-07"), "2": _utc("2026-01-08")}
    mask, start = holdout_mask(ts, ends, None)
    assert start == pd.Timestamp("2026-01-08", tz="UTC")
    assert mask.sum() == 3 * 24
    assert np.all(ts[mask] >= start)


def test_explicit_holdout_days_may_not_reach_into_a_training_window() -> None:
    ts = _days(10)
    ends = {"1": _utc("2026-01-07")}
    mask, _ = holdout_mask(ts, ends, 2.0)
    assert mask.sum() == 2 * 24 + 1  # the last 48 h, both ends included
    with pytest.raises(PromotionError, match="inside version 1's training window"):
        holdout_mask(ts, ends, 5.0)


def test_unknown_training_window_needs_explicit_days() -> None:
    ts = _days(10)
    with pytest.raises(PromotionError, match="pass --holdout-days"):
        holdout_mask(ts, {"3": None}, None)
    mask, _ = holdout_mask(ts, {"3": None}, 1.0)
    assert mask.sum() == 25


def test_no_rows_after_the_training_windows_is_an_error() -> None:
    with pytest.raises(PromotionError, match="no transactions"):
        holdout_mask(_days(3), {"1": _utc("2026-02-01")}, None)
