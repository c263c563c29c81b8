"""Bundle round trip against the sklearn/xgboost originals, and every refusal of load_bundle."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from serve_app.bundle import (
    BUNDLE_JSON,
    XGB_FILE,
    BundleError,
    LinearModel,
    ModelBundle,
    TreeModel,
    load_bundle,
    save_bundle,
)
from serve_app.features.contract import FEATURE_NAMES, FEATURE_VERSION
from serve_app.features.derive import linear_transform

N_FEATURES = len(FEATURE_NAMES)


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.exponential(2.0, size=(n, N_FEATURES))  # non-negative, like counts and amounts
    logit = 1.5 * np.log1p(x[:, 0]) - 0.8 * x[:, 3] + 0.5 * x[:, 10] - 1.0
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return x, y


@pytest.fixture(scope="module")
def originals() -> tuple[StandardScaler, LogisticRegression, xgb.Booster]:
    x, y = _data(2000, 0)
    z = linear_transform(x)
    scaler = StandardScaler().fit(z)
    lr = LogisticRegression(class_weight="balanced", max_iter=1000).fit(scaler.transform(z), y)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3, "nthread": 1, "seed": 0},
        xgb.DMatrix(x, label=y, feature_names=list(FEATURE_NAMES)),
        num_boost_round=20,
    )
    return scaler, lr, booster


def _bundle(originals: tuple[StandardScaler, LogisticRegression, xgb.Booster]) -> ModelBundle:
    scaler, lr, booster = originals
    return ModelBundle(
        version="local",
        feature_names=FEATURE_NAMES,
        feature_version=FEATURE_VERSION,
        lr=LinearModel(
            coef=lr.coef_[0].copy(), intercept=float(lr.intercept_[0]), mean=scaler.mean_, scale=scaler.scale_
        ),
        xgb=TreeModel.from_booster(booster),
        lr_weight=0.3,
        calibration_x=np.array([0.0, 0.2, 0.6, 1.0]),
        calibration_y=np.array([0.0, 0.05, 0.5, 0.99]),
        review_threshold=0.2,
        decline_threshold=0.7,
        history_fill=np.arange(N_FEATURES, dtype=np.float64),
        summary={"rows": 2000, "auc": np.float64(0.9), "undefined": float("nan")},
    )


@pytest.fixture
def saved(tmp_path: Path, originals: tuple[StandardScaler, LogisticRegression, xgb.Booster]) -> Path:
    directory = tmp_path / "bundle"
    save_bundle(_bundle(originals), directory)
    return directory


def test_round_trip_predicts_exactly_like_the_originals(
    saved: Path, originals: tuple[StandardScaler, LogisticRegression, xgb.Booster]
) -> None:
    scaler, lr, booster = originals
    x, _ = _data(500, 1)
    loaded = load_bundle(saved, version="7")
    assert loaded.version == "7"
    expected_lr = lr.predict_proba(scaler.transform(linear_transform(x)))[:, 1]
    np.testing.assert_allclose(loaded.lr.predict_proba(x), expected_lr, rtol=1e-12, atol=1e-15)
    expected_xgb = booster.predict(xgb.DMatrix(x, feature_names=list(FEATURE_NAMES)))
    np.testing.assert_array_equal(loaded.xgb.predict_proba(x), expected_xgb.astype(np.float64))
    raw = 0.3 * expected_lr + 0.7 * expected_xgb
    np.testing.assert_allclose(
        loaded.combine(loaded.lr.predict_proba(x), loaded.xgb.predict_proba(x)),
        np.interp(raw, [0.0, 0.2, 0.6, 1.0], [0.0, 0.05, 0.5, 0.99]),
        rtol=1e-6,
    )
    assert (loaded.review_threshold, loaded.decline_threshold, loaded.lr_weight) == (0.2, 0.7, 0.3)
    np.testing.assert_array_equal(loaded.history_fill, np.arange(N_FEATURES))
    assert loaded.summary == {"rows": 2000, "auc": 0.9, "undefined": None}


def test_contributions_add_up_to_each_models_log_odds(
    saved: Path, originals: tuple[StandardScaler, LogisticRegression, xgb.Booster]
) -> None:
    scaler, lr, booster = originals
    x, _ = _data(50, 2)
    loaded = load_bundle(saved)
    lr_contrib = loaded.lr.contributions(x)
    assert lr_contrib.shape == (50, N_FEATURES)
    np.testing.assert_allclose(
        lr_contrib.sum(axis=1) + loaded.lr.intercept,
        lr.decision_function(scaler.transform(linear_transform(x))),
        rtol=1e-10,
    )
    xgb_contrib = loaded.xgb.contributions(x)
    assert xgb_contrib.shape == (50, N_FEATURES)
    dmatrix = xgb.DMatrix(x, feature_names=list(FEATURE_NAMES))
    bias = booster.predict(dmatrix, pred_contribs=True)[:, -1]
    margin = booster.predict(dmatrix, output_margin=True)
    np.testing.assert_allclose(xgb_contrib.sum(axis=1) + bias, margin, rtol=1e-4, atol=1e-4)


def test_saved_files_are_json_and_ubj_only(saved: Path) -> None:
    assert sorted(p.name for p in saved.iterdir()) == sorted([BUNDLE_JSON, XGB_FILE])
    assert json.loads((saved / BUNDLE_JSON).read_text())["feature_names"] == list(FEATURE_NAMES)


def _edit_json(directory: Path, **changes: object) -> None:
    path = directory / BUNDLE_JSON
    payload = json.loads(path.read_text())
    payload.update(changes)
    path.write_text(json.dumps(payload))


def test_wrong_feature_list_is_refused(saved: Path) -> None:
    _edit_json(saved, feature_names=list(reversed(FEATURE_NAMES)))
    with pytest.raises(BundleError, match="feature list differs"):
        load_bundle(saved)


def test_missing_feature_is_refused(saved: Path) -> None:
    _edit_json(saved, feature_names=list(FEATURE_NAMES[:-1]))
    with pytest.raises(BundleError):
        load_bundle(saved)


def test_other_feature_version_is_refused(saved: Path) -> None:
    _edit_json(saved, feature_version="v0-000000000000")
    with pytest.raises(BundleError, match="feature_version"):
        load_bundle(saved)


@pytest.mark.parametrize("name", ["model.pkl", "python_model.pickle", "cloudpickle_env.txt"])
def test_pickle_files_are_refused_without_reading_them(saved: Path, name: str) -> None:
    (saved / name).write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(BundleError, match="pickle"):
        load_bundle(saved)


def test_corrupt_json_is_refused(saved: Path) -> None:
    path = saved / BUNDLE_JSON
    path.write_text(path.read_text()[:200])
    with pytest.raises(BundleError, match="invalid"):
        load_bundle(saved)


def test_non_finite_or_inconsistent_values_are_refused(saved: Path) -> None:
    (saved / BUNDLE_JSON).write_text(
        (saved / BUNDLE_JSON).read_text().replace('"lr_weight": 0.3', '"lr_weight": NaN')
    )
    with pytest.raises(BundleError):
        load_bundle(saved)


def test_thresholds_out_of_order_are_refused(saved: Path) -> None:
    _edit_json(saved, review_threshold=0.9, decline_threshold=0.5)
    with pytest.raises(BundleError, match="review_threshold"):
        load_bundle(saved)


def test_replaced_or_missing_booster_is_refused(saved: Path) -> None:
    (saved / XGB_FILE).write_bytes(b"garbage")
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(saved)
    (saved / XGB_FILE).unlink()
    with pytest.raises(BundleError, match=r"no xgb\.ubj"):
        load_bundle(saved)


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nowhere")


def test_predict_refuses_wrong_shapes(saved: Path) -> None:
    loaded = load_bundle(saved)
    expected = re.escape(f"(n, {N_FEATURES})")
    with pytest.raises(ValueError, match=expected):
        loaded.lr.predict_proba(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=expected):
        loaded.xgb.predict_proba(np.zeros(N_FEATURES))
