"""Ensemble weight, calibration map and threshold rules on hand-made validation sets."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from serve_app.features.contract import FEATURE_NAMES
from train.fit import FitConfig, choose_lr_weight, choose_thresholds, fit_bundle, fit_calibration


def test_thresholds_follow_the_documented_rule() -> None:
    scores = np.arange(1, 1001) / 1000.0  # 0.001 .. 1.000, one row each
    fraud_scores = [*(np.arange(992, 1001) / 1000.0), 0.990, 0.900, 0.500]  # 12 frauds; 0.991 is genuine
    y = np.isin(scores, fraud_scores).astype(int)
    assert y.sum() == 12
    review, decline = choose_thresholds(y, scores)
    # Decline: >= 0.991 is 9/10 = 0.9 precise, >= 0.990 is 10/11; >= 0.989 drops to 10/12. Lowest: 0.990.
    assert decline == pytest.approx(0.990)
    # Review: 90 % recall needs 11 of 12 frauds, i.e. >= 0.900 (101 rows = 10 %); the 3 % cap allows
    # at most 30 rows, i.e. >= 0.971, which wins.
    assert review == pytest.approx(0.971)


def test_decline_without_a_precise_threshold_takes_the_most_precise() -> None:
    scores = np.arange(1, 11) / 10.0
    y = np.isin(scores, [0.9, 0.7]).astype(int)
    # Precision peaks at 1/2 for >= 0.9 and for >= 0.7; the lower one keeps more recall.
    review, decline = choose_thresholds(y, scores)
    assert decline == pytest.approx(0.7)
    assert review <= decline


def test_review_never_exceeds_decline() -> None:
    scores = np.arange(1, 101) / 100.0
    y = (scores > 0.5).astype(int)  # half the rows are fraud: the 3 % cap pushes review very high
    review, decline = choose_thresholds(y, scores)
    assert review <= decline


def test_lr_weight_is_the_lowest_with_the_best_validation_pr_auc() -> None:
    y = np.arange(200) % 2
    p_lr = (0.25 + 0.5 * y).astype(np.float64)  # separates the classes perfectly
    p_xgb = np.linspace(0.0, 1.0, 200)  # no signal, spanning [0, 1] in both classes
    # Perfect separation needs 0.75 w + (1 - w) * 0.005 > 0.25 w + (1 - w) * 0.995: w >= 0.7 on the grid.
    assert choose_lr_weight(y, p_lr, p_xgb) == 0.7
    # Swapped: every w <= 0.3 separates perfectly, and the lowest is taken.
    assert choose_lr_weight(y, p_xgb, p_lr) == 0.0


def test_calibration_is_strictly_increasing_and_close_to_isotonic() -> None:
    rng = np.random.default_rng(3)
    raw = rng.random(3000) ** 3
    y = (rng.random(3000) < raw).astype(int)
    knots_x, knots_y = fit_calibration(y, raw)
    assert knots_x[0] == 0.0
    assert knots_x[-1] == 1.0
    assert np.all(np.diff(knots_x) > 0)
    assert np.all(np.diff(knots_y) > 0)
    assert knots_y.min() >= 0.0
    assert knots_y.max() <= 1.0
    calibrated = np.interp(raw, knots_x, knots_y)
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(raw, y)
    np.testing.assert_allclose(calibrated, iso.predict(raw), atol=1.1e-3)
    # Distinct raw scores stay distinct and in order: ranking metrics are unchanged by calibration.
    order = np.argsort(raw)
    assert np.all(np.diff(calibrated[order]) > 0)


def test_fit_bundle_on_a_small_problem() -> None:
    rng = np.random.default_rng(5)
    n, f = 4000, len(FEATURE_NAMES)
    x = rng.exponential(1.0, size=(n, f))
    y = (rng.random(n) < 1 / (1 + np.exp(-(2.0 * x[:, 0] - 4.0)))).astype(int)
    config = FitConfig(xgb_max_rounds=30, xgb_max_depth=3, nthread=1)
    result = fit_bundle(x[:3000], y[:3000], x[3000:], y[3000:], config, summary={"note": "unit"})
    bundle = result.bundle
    assert bundle.feature_names == FEATURE_NAMES
    assert 0.0 <= bundle.lr_weight <= 1.0
    assert bundle.review_threshold <= bundle.decline_threshold
    np.testing.assert_array_equal(bundle.history_fill, np.median(x[:3000], axis=0))
    assert bundle.summary["note"] == "unit"
    assert bundle.summary["xgb_best_iteration"] == result.best_iteration < 30
    assert result.validation["pr_auc_ensemble"] > y[3000:].mean()  # better than a random ranking
    # Both models put their weight on the one informative feature.
    assert int(np.argmax(np.abs(bundle.lr.coef))) == 0
    assert int(np.argmax(np.abs(bundle.xgb.contributions(x[3000:])).mean(axis=0))) == 0


def test_fit_bundle_refuses_a_split_without_frauds() -> None:
    x = np.ones((10, len(FEATURE_NAMES)))
    with pytest.raises(ValueError, match="validation split: needs both"):
        fit_bundle(x, np.r_[np.zeros(5), np.ones(5)], x, np.zeros(10))
    with pytest.raises(ValueError, match="non-finite"):
        fit_bundle(np.full((10, len(FEATURE_NAMES)), np.nan), np.r_[np.zeros(5), np.ones(5)], x, np.zeros(10))
