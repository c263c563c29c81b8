"""ModelReloader without Ray: checked atomic swaps, refusal of contract-breaking bundles, version pinning."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from serve_app.bundle import (
    BUNDLE_JSON,
    BundleError,
    LinearModel,
    ModelBundle,
    TreeModel,
    load_bundle,
    save_bundle,
)
from serve_app.features.contract import FEATURE_NAMES, FEATURE_VERSION
from serve_app.models import LogisticRegressionModel, XGBoostModel
from serve_app.reloader import (
    AliasPoller,
    ModelReloader,
    VersionUnavailableError,
    check_servable,
    run_pinned,
)
from serve_app.scoring import ModelOutput

F = len(FEATURE_NAMES)
ALIAS = "champion"


def make_bundle(seed: int) -> ModelBundle:
    """A small but real bundle; each seed gives different LR coefficients and a different booster."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 10, (300, F))
    y = (x[:, seed % F] > 6).astype(float)
    booster = xgb.train({"max_depth": 2, "objective": "binary:logistic"}, xgb.DMatrix(x, y), 4)
    return ModelBundle(
        version="unsaved",
        feature_names=FEATURE_NAMES,
        feature_version=FEATURE_VERSION,
        lr=LinearModel(coef=rng.normal(size=F), intercept=-1.0, mean=np.ones(F), scale=np.full(F, 2.0)),
        xgb=TreeModel.from_booster(booster),
        lr_weight=0.4,
        calibration_x=np.array([0.0, 1.0]),
        calibration_y=np.array([0.0, 1.0]),
        review_threshold=0.3,
        decline_threshold=0.8,
        history_fill=np.zeros(F),
        summary={"seed": seed},
    )


class DirectoryRegistry:
    """The registry's contract on local disk: versions in root/<version>/, an alias file per alias.

    Bundles go through the real `save_bundle` / `load_bundle`, so every check a registry bundle meets
    (pickles, checksums, the feature contract) applies here too. `loads` counts bundle reads.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.loads = 0

    def publish(self, version: str, bundle: ModelBundle) -> None:
        save_bundle(bundle, self.root / version)

    def point(self, alias: str, version: str) -> None:
        (self.root / f"{alias}.alias").write_text(version)

    def resolve(self, alias: str) -> str | None:
        path = self.root / f"{alias}.alias"
        return path.read_text() if path.is_file() else None

    def load_version(self, version: str) -> ModelBundle:
        if not (self.root / version).is_dir():
            raise LookupError(f"no version {version}")  # what a registry answers, not a bundle verdict
        self.loads += 1
        return load_bundle(self.root / version, version=version)

    def __call__(self, alias: str) -> ModelBundle:
        version = self.resolve(alias)
        if version is None:
            raise LookupError(f"no alias {alias}")
        return self.load_version(version)


@pytest.fixture(scope="module")
def bundles() -> dict[str, ModelBundle]:
    return {"1": make_bundle(1), "2": make_bundle(2), "4": make_bundle(4)}


@pytest.fixture
def registry(tmp_path: Path, bundles: dict[str, ModelBundle]) -> DirectoryRegistry:
    registry = DirectoryRegistry(tmp_path)
    for version, bundle in bundles.items():
        registry.publish(version, bundle)
    # Version 3 breaks the contract: the same features in another order (what a stale trainer produces).
    registry.publish("3", dataclasses.replace(bundles["2"], feature_names=tuple(reversed(FEATURE_NAMES))))
    registry.point(ALIAS, "1")
    return registry


def _features(rows: int = 5) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 10, (rows, F))


def test_a_moved_alias_swaps_the_whole_bundle_and_keeps_the_previous(registry: DirectoryRegistry) -> None:
    reloader = ModelReloader(registry, ALIAS, name="test")
    first = reloader.bundle
    assert first.version == "1"
    registry.point(ALIAS, "2")
    outcome = reloader.refresh()
    assert outcome.status == "swapped"
    assert (outcome.version, outcome.previous_version, outcome.candidate_version) == ("2", "1", "2")
    assert reloader.bundle.version == "2"
    np.testing.assert_array_equal(reloader.bundle.lr.coef, load_bundle(registry.root / "2").lr.coef)
    assert reloader.held_versions() == ["1", "2"]
    assert reloader.bundle_for("1") is first  # the old version still serves requests pinned to it


def test_an_unmoved_alias_loads_nothing(registry: DirectoryRegistry) -> None:
    reloader = ModelReloader(registry, ALIAS, name="test")
    served, loads = reloader.bundle, registry.loads
    outcome = reloader.refresh()
    assert outcome.status == "unchanged"
    assert reloader.bundle is served
    assert registry.loads == loads


def test_swap_callback_gets_the_new_version(registry: DirectoryRegistry) -> None:
    swapped: list[str] = []
    reloader = ModelReloader(registry, ALIAS, name="test", on_swap=swapped.append)
    registry.point(ALIAS, "2")
    reloader.refresh()
    reloader.refresh()
    assert swapped == ["2"]


def test_a_bundle_with_another_feature_list_is_refused_and_the_old_one_keeps_serving(
    registry: DirectoryRegistry,
) -> None:
    reloader = ModelReloader(registry, ALIAS, name="test")
    registry.point(ALIAS, "2")
    reloader.refresh()
    served = reloader.bundle
    registry.point(ALIAS, "3")
    outcome = reloader.refresh()
    assert outcome.status == "refused"
    assert outcome.candidate_version == "3"
    assert outcome.version == "2"
    assert "feature list differs" in str(outcome.detail)
    assert reloader.bundle is served
    assert "3" not in reloader.held_versions()
    # Versions are immutable: the poller does not download a refused one again; an explicit reload does.
    loads = registry.loads
    assert reloader.refresh().status == "refused"
    assert registry.loads == loads
    assert reloader.refresh(retry_refused=True).status == "refused"
    assert registry.loads == loads + 1
    assert reloader.bundle is served


def test_a_bundle_of_another_feature_version_is_refused(registry: DirectoryRegistry) -> None:
    spec_path = registry.root / "4" / BUNDLE_JSON
    spec = json.loads(spec_path.read_text())
    spec["feature_version"] = "v0-older"
    spec_path.write_text(json.dumps(spec))
    reloader = ModelReloader(registry, ALIAS, name="test")
    registry.point(ALIAS, "4")
    outcome = reloader.refresh()
    assert outcome.status == "refused"
    assert "feature_version" in str(outcome.detail)
    assert reloader.bundle.version == "1"


def test_a_missing_alias_keeps_the_old_bundle(registry: DirectoryRegistry) -> None:
    reloader = ModelReloader(registry, ALIAS, name="test")
    (registry.root / f"{ALIAS}.alias").unlink()
    outcome = reloader.refresh()
    assert outcome.status == "failed"
    assert f"alias {ALIAS!r} does not exist" == outcome.detail
    assert reloader.bundle.version == "1"
    assert reloader.pending_version() is None


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_check_servable_refuses_a_bundle_whose_model_cannot_score(bundles: dict[str, ModelBundle]) -> None:
    broken_lr = dataclasses.replace(bundles["1"].lr, coef=np.full(F, np.nan))
    with pytest.raises(BundleError, match="not in \\[0, 1\\]"):
        check_servable(dataclasses.replace(bundles["1"], lr=broken_lr))
    with pytest.raises(BundleError, match="feature list"):
        check_servable(dataclasses.replace(bundles["1"], feature_names=FEATURE_NAMES[:-1]))
    check_servable(bundles["1"])


def test_a_bad_champion_at_start_fails_the_replica(registry: DirectoryRegistry) -> None:
    registry.point(ALIAS, "3")
    with pytest.raises(BundleError, match="feature list"):
        ModelReloader(registry, ALIAS, name="test")


@pytest.mark.parametrize("deployment", [LogisticRegressionModel, XGBoostModel])
def test_predict_answers_with_exactly_the_pinned_version(
    deployment: object, registry: DirectoryRegistry, bundles: dict[str, ModelBundle]
) -> None:
    model = deployment.func_or_class(registry, ALIAS)  # type: ignore[attr-defined]
    registry.point(ALIAS, "2")
    model.reloader.refresh()
    x = _features()
    for version in ("1", "2"):
        output: ModelOutput = model.predict(x, version=version)
        assert output.version == version
        part = bundles[version].lr if deployment is LogisticRegressionModel else bundles[version].xgb
        np.testing.assert_allclose(output.probabilities, part.predict_proba(x))
    assert model.predict(x).version == "2"  # unpinned: the active bundle


def test_a_pinned_version_not_held_is_loaded_by_version_without_changing_the_active_one(
    registry: DirectoryRegistry,
) -> None:
    registry.point(ALIAS, "2")
    reloader = ModelReloader(registry, ALIAS, name="test")  # a replica started after the alias moved
    assert reloader.held_versions() == ["2"]
    assert reloader.bundle_for("1").version == "1"
    assert reloader.bundle.version == "2"
    assert reloader.held_versions() == ["1", "2"]


def test_unknown_or_refused_pinned_versions_are_unavailable(registry: DirectoryRegistry) -> None:
    reloader = ModelReloader(registry, ALIAS, name="test")
    with pytest.raises(VersionUnavailableError, match="cannot load version 9"):
        reloader.bundle_for("9")
    with pytest.raises(VersionUnavailableError, match="refused version 3"):
        reloader.bundle_for("3")
    loads = registry.loads
    with pytest.raises(VersionUnavailableError, match="refused version 3"):
        reloader.bundle_for("3")
    assert registry.loads == loads  # not read again
    assert reloader.bundle.version == "1"


def test_old_versions_beyond_the_retained_count_are_dropped_and_a_rollback_needs_no_load(
    registry: DirectoryRegistry,
) -> None:
    reloader = ModelReloader(registry, ALIAS, name="test", retained=1)
    registry.point(ALIAS, "2")
    reloader.refresh()
    registry.point(ALIAS, "4")
    reloader.refresh()
    assert reloader.held_versions() == ["2", "4"]
    loads = registry.loads
    registry.point(ALIAS, "2")  # roll back
    assert reloader.refresh().status == "swapped"
    assert registry.loads == loads
    assert reloader.held_versions() == ["4", "2"]


def test_run_pinned_falls_back_to_the_previous_version_when_a_model_lacks_the_new_one(
    tmp_path: Path, registry: DirectoryRegistry, bundles: dict[str, ModelBundle]
) -> None:
    # The model replica's registry knows only version 1 (a replica that cannot get version 2).
    model_registry = DirectoryRegistry(tmp_path / "model-side")
    model_registry.publish("1", bundles["1"])
    model_registry.point(ALIAS, "1")
    model = LogisticRegressionModel.func_or_class(model_registry, ALIAS)  # type: ignore[attr-defined]
    ingress = ModelReloader(registry, ALIAS, name="ingress")
    registry.point(ALIAS, "2")
    ingress.refresh()
    x = _features()

    async def score(bundle: ModelBundle) -> tuple[str, str]:
        return bundle.version, model.predict(x, version=bundle.version).version

    assert asyncio.run(run_pinned(ingress, score)) == ("1", "1")  # never ("2", "1")
    lone = ModelReloader(registry, ALIAS, name="ingress")  # holds only version 2: nothing to fall back to
    with pytest.raises(VersionUnavailableError):
        asyncio.run(run_pinned(lone, score))


def test_the_poller_follows_the_alias_and_stops(registry: DirectoryRegistry) -> None:
    reloader = ModelReloader(registry, ALIAS, name="test")

    async def scenario() -> tuple[str, bool]:
        poller = AliasPoller(lambda: asyncio.to_thread(reloader.refresh), "test")
        poller.set_interval(0.02)
        registry.point(ALIAS, "2")
        for _ in range(200):
            if reloader.bundle.version == "2":
                break
            await asyncio.sleep(0.01)
        poller.set_interval(0)
        return reloader.bundle.version, poller.running

    assert asyncio.run(scenario()) == ("2", False)


def test_a_failing_tick_does_not_stop_the_poller() -> None:
    ticks: list[int] = []

    async def tick() -> None:
        ticks.append(1)
        raise RuntimeError("registry hiccup")

    async def scenario() -> bool:
        poller = AliasPoller(tick, "test")
        poller.set_interval(0.01)
        for _ in range(200):
            if len(ticks) >= 3:
                break
            await asyncio.sleep(0.01)
        running = poller.running
        poller.stop()
        return running

    assert asyncio.run(scenario())
    assert len(ticks) >= 3
    with pytest.raises(ValueError, match="poll interval"):
        AliasPoller(tick, "test").set_interval(-1)
