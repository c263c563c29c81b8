"""Scoring: thresholds, rule overrides, version checks and reasons on a small real bundle."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb

from serve_app.bundle import LinearModel, ModelBundle, TreeModel
from serve_app.features.contract import FEATURE_NAMES, FEATURE_VERSION
from serve_app.scoring import (
    ModelOutput,
    RuleVerdicts,
    VersionMismatchError,
    final_decision,
    model_decisions,
    score_batch,
    top_reasons,
)

F = len(FEATURE_NAMES)
AMOUNT = FEATURE_NAMES.index("amount")
NEW_MERCHANT = FEATURE_NAMES.index("cust_new_merchant")


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    """A real bundle: LR on amount and new-merchant, a 3-tree XGBoost fitted on a rule of the same kind."""
    rng = np.random.default_rng(0)
    x = np.zeros((400, F))
    x[:, AMOUNT] = rng.uniform(1, 5000, 400)
    x[:, NEW_MERCHANT] = rng.integers(0, 2, 400)
    y = ((x[:, AMOUNT] > 2500) & (x[:, NEW_MERCHANT] == 1)).astype(float)
    booster = xgb.train(
        {"max_depth": 2, "objective": "binary:logistic"}, xgb.DMatrix(x, y), num_boost_round=3
    )
    coef = np.zeros(F)
    coef[AMOUNT], coef[NEW_MERCHANT] = 1.5, 1.0
    mean = np.zeros(F)
    mean[AMOUNT] = np.log1p(100.0)  # the LR sees log1p(amount), centred on a typical 100
    return ModelBundle(
        version="fraud-scorer/7",
        feature_names=FEATURE_NAMES,
        feature_version=FEATURE_VERSION,
        lr=LinearModel(coef=coef, intercept=-3.0, mean=mean, scale=np.ones(F)),
        xgb=TreeModel.from_booster(booster),
        lr_weight=0.4,
        calibration_x=np.array([0.0, 1.0]),
        calibration_y=np.array([0.0, 1.0]),
        review_threshold=0.3,
        decline_threshold=0.7,
        history_fill=np.zeros(F),
        summary={},
    )


def _outputs(
    bundle: ModelBundle, x: np.ndarray, version: str | None = None
) -> tuple[ModelOutput, ModelOutput]:
    v = version or bundle.version
    lr = ModelOutput(v, bundle.lr.predict_proba(x), bundle.lr.contributions(x))
    tree = ModelOutput(bundle.version, bundle.xgb.predict_proba(x), bundle.xgb.contributions(x))
    return lr, tree


def test_thresholds_are_inclusive() -> None:
    assert model_decisions(np.array([0.29, 0.3, 0.69, 0.7, 1.0]), 0.3, 0.7) == [
        "approve",
        "review",
        "review",
        "decline",
        "decline",
    ]


@pytest.mark.parametrize(
    ("model", "rule", "expected"),
    [
        ("approve", None, "approve"),
        ("decline", "approve", "approve"),
        ("approve", "decline", "decline"),
        ("approve", "review", "review"),
        ("decline", "review", "decline"),
        ("review", "review", "review"),
    ],
)
def test_rule_overrides(model: str, rule: str | None, expected: str) -> None:
    assert final_decision(model, rule) == expected  # type: ignore[arg-type]


def test_score_batch_matches_the_bundle_and_applies_rules(bundle: ModelBundle) -> None:
    x = np.zeros((3, F))
    x[:, AMOUNT] = [4000.0, 4000.0, 20.0]
    x[:, NEW_MERCHANT] = [1.0, 1.0, 0.0]
    lr, tree = _outputs(bundle, x)
    rules = RuleVerdicts(hits=[[], ["vip"], []], actions=[None, "approve", None])
    out = score_batch(bundle, ["a", "b", "c"], x, [False, False, False], lr, tree, rules)

    expected_p = bundle.predict_proba(x)
    assert [r.transaction_id for r in out] == ["a", "b", "c"]
    assert [r.fraud_probability for r in out] == pytest.approx(expected_p, abs=1e-6)
    by_model = model_decisions(expected_p, 0.3, 0.7)
    assert by_model[0] != "approve"  # the fixture really produces a risky row
    assert out[0].decision == by_model[0]
    assert (out[1].decision, out[1].rule_hits) == ("approve", ["vip"])
    assert out[2].decision == by_model[2] == "approve"
    assert out[0].model_probabilities["logistic_regression"] == pytest.approx(lr.probabilities[0], abs=1e-6)
    assert out[0].model_probabilities["xgboost"] == pytest.approx(tree.probabilities[0], abs=1e-6)
    assert all(r.model_version == "fraud-scorer/7" for r in out)
    # The risky row is explained by amount and the new merchant, with their values.
    top = {r.feature: r for r in out[0].reasons}
    assert top["amount"].value == 4000.0
    assert top["amount"].contribution > 0
    assert "cust_new_merchant" in top


def test_mixed_versions_are_refused(bundle: ModelBundle) -> None:
    x = np.zeros((1, F))
    lr, tree = _outputs(bundle, x, version="fraud-scorer/8")
    with pytest.raises(VersionMismatchError, match="fraud-scorer/7"):
        score_batch(bundle, ["a"], x, [False], lr, tree, RuleVerdicts([[]], [None]))


def test_row_counts_must_agree(bundle: ModelBundle) -> None:
    x = np.zeros((2, F))
    lr, tree = _outputs(bundle, x)
    with pytest.raises(ValueError, match=r"rules\.hits has 1 rows for 2"):
        score_batch(bundle, ["a", "b"], x, [False, False], lr, tree, RuleVerdicts([[]], [None, None]))


def test_reasons_follow_the_decision_and_skip_filled_history_when_degraded() -> None:
    names = ("amount", "cust_count_1h", "hour_sin", "is_night")
    values = np.array([10.0, 3.0, 0.5, 1.0])
    contributions = np.array([0.2, 1.5, -0.9, 0.4])
    towards_fraud = top_reasons(names, values, contributions, "decline", degraded=False, k=2)
    assert [r.feature for r in towards_fraud] == ["cust_count_1h", "is_night"]
    towards_genuine = top_reasons(names, values, contributions, "approve", degraded=False, k=2)
    assert [r.feature for r in towards_genuine] == ["hour_sin", "amount"]
    degraded = top_reasons(names, values, contributions, "decline", degraded=True, k=3)
    assert "cust_count_1h" not in [r.feature for r in degraded]
    assert degraded[0].feature == "is_night"
