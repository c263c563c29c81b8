"""Model deployments' plain classes: vectorised predict from one bundle, polling set by reconfigure."""

from __future__ import annotations

import asyncio
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


def test_reconfigure_starts_and_stops_the_alias_poller(bundle_dir: Path) -> None:
    model = _plain(LogisticRegressionModel)(DirectoryLoader(str(bundle_dir)), "champion")

    async def scenario() -> list[tuple[bool, float]]:
        seen = []
        for interval in (5, 0.5, 0):
            await model.reconfigure({"model_poll_interval_s": interval, "revision": 0})
            seen.append((model.poller.running, model.poller.interval_s))
        return seen

    assert asyncio.run(scenario()) == [(True, 5.0), (True, 0.5), (False, 0.0)]


def test_a_revision_bump_re_resolves_the_alias_now(bundle_dir: Path) -> None:
    model = _plain(XGBoostModel)(DirectoryLoader(str(bundle_dir)), "champion")
    served = model.bundle
    asyncio.run(model.reconfigure({"model_poll_interval_s": 0, "revision": 1}))
    assert model.revision == 1
    assert model.bundle is served  # a directory's one version never moves: nothing to swap
    outcome = asyncio.run(model.reload())
    assert (outcome.status, outcome.version, outcome.held_versions) == ("unchanged", "local", ["local"])


@pytest.mark.parametrize(
    ("user_config", "field"),
    [
        ({"revison": 2}, "revison"),
        ({"model_alias": "challenger"}, "model_alias"),
        ({"model_poll_interval_s": -1}, "model_poll_interval_s"),
    ],
)
def test_a_bad_user_config_is_refused_naming_the_field(
    bundle_dir: Path, user_config: dict[str, object], field: str
) -> None:
    model = _plain(XGBoostModel)(DirectoryLoader(str(bundle_dir)), "champion")
    served = model.bundle
    with pytest.raises(ValidationError, match=field):
        asyncio.run(model.reconfigure(user_config))
    assert model.bundle is served


def test_a_directory_serves_only_its_own_version(bundle_dir: Path) -> None:
    loader = DirectoryLoader(str(bundle_dir), version="7")
    assert loader.resolve("champion") == "7"
    assert loader.load_version("7").version == "7"
    with pytest.raises(BundleError, match="not '8'"):
        loader.load_version("8")
