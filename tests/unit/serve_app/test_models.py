"""Model deployments' plain classes: vectorised predict from one bundle, reload on reconfigure."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
from pydantic import ValidationError

from serve_app.bundle import BundleError, LinearModel, ModelBundle, TreeModel, save_bundle
from serve_app.features.contract import FEATURE_NAMES, FEATURE_VERSION
from serve_app.models import DirectoryLoader, LogisticRegressionModel, XGBoostModel

F = len(FEATURE_NAMES)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 10, (300, F))
    y = (x[:, 0] > 6).astype(float)
    booster = xgb.train(
        {"max_depth": 2, "objective": "binary:logistic"}, xgb.DMatrix(x, y), num_boost_round=4
    )
    bundle = ModelBundle(
        version="ignored",
        feature_names=FEATURE_NAMES,
        feature_version=FEATURE_VERSION,
        lr=LinearModel(coef=rng.normal(size=F), intercept=-1.0, mean=np.ones(F), scale=np.full(F, 2.0)),
        xgb=TreeModel.from_booster(booster),
        lr_weight=0.5,
        calibration_x=np.array([0.0, 1.0]),
        calibration_y=np.array([0.0, 1.0]),
        review_threshold=0.3,
        decline_threshold=0.8,
        history_fill=np.zeros(F),
        summary={},
    )
    directory = tmp_path_factory.mktemp("bundle")
    save_bundle(bundle, directory)
    return directory


def _plain(deployment: object) -> type:
    return deployment.func_or_class  # type: ignore[attr-defined]


@pytest.mark.parametrize("deployment", [LogisticRegressionModel, XGBoostModel])
def test_predict_is_vectorised_and_tagged_with_the_bundle_version(
    deployment: object, bundle_dir: Path
) -> None:
    model = _plain(deployment)(DirectoryLoader(str(bundle_dir), version="fraud-scorer/4"), "champion")
    x = np.random.default_rng(0).uniform(0, 10, (17, F))
    version, probabilities, contributions = model.predict(x)
    assert version == "fraud-scorer/4" == model.version()
    part = model.bundle.lr if deployment is LogisticRegressionModel else model.bundle.xgb
    np.testing.assert_allclose(probabilities, part.predict_proba(x))
    assert contributions.shape == (17, F)


def test_reconfigure_reloads_only_when_the_selection_changes(bundle_dir: Path) -> None:
    model = _plain(LogisticRegressionModel)(DirectoryLoader(str(bundle_dir)), "champion")
    first = model.bundle
    model.reconfigure({"revision": 0})
    assert model.bundle is first  # same alias, same revision: nothing to do
    model.reconfigure({"revision": 1})
    assert model.bundle is not first
    model.reconfigure({"model_alias": "challenger", "revision": 1})
    assert model.selection == ("challenger", 1)


def test_a_bad_user_config_or_a_failed_reload_keeps_the_old_bundle(bundle_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    model = _plain(XGBoostModel)(DirectoryLoader(str(copy)), "champion")
    served = model.bundle
    with pytest.raises(ValidationError, match="revison"):
        model.reconfigure({"revison": 2})
    shutil.rmtree(copy)
    with pytest.raises(BundleError, match="does not exist"):
        model.reconfigure({"revision": 2})
    assert model.bundle is served
    assert model.selection == ("champion", 0)
