"""LogisticRegressionModel and XGBoostModel deployments: thin, vectorised, both from one bundle version."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from serve_app import metrics
from serve_app.bundle import ModelBundle, load_bundle
from serve_app.schemas import ID_PATTERN
from serve_app.scoring import ModelOutput
from serve_app.settings import get_settings

logger = logging.getLogger(__name__)
FloatArray = npt.NDArray[np.float64]


class BundleLoader(Protocol):
    """Anything that returns the bundle an alias points at (the registry in production)."""

    def __call__(self, alias: str) -> ModelBundle: ...


@dataclass(frozen=True)
class RegistryLoader:
    """Loads `models:/<name>@<alias>` through serve_app.model_store; None settings resolve in the replica."""

    model_name: str
    tracking_uri: str | None = None
    cache_dir: str | None = None

    def __call__(self, alias: str) -> ModelBundle:
        from serve_app.model_store import (
            load_registered_bundle,
        )  # MLflow is imported only where a bundle is loaded

        settings = get_settings()
        cache_dir = Path(self.cache_dir) if self.cache_dir else settings.data_dir / "model_cache"
        return load_registered_bundle(
            self.model_name, alias, self.tracking_uri or settings.tracking_uri, cache_dir
        )


@dataclass(frozen=True)
class DirectoryLoader:
    """Serves a bundle written by `serve_app.bundle.save_bundle` (no registry: air-gapped or a test)."""

    directory: str
    version: str = "local"

    def __call__(self, alias: str) -> ModelBundle:
        return load_bundle(Path(self.directory), version=self.version)


class ModelUserConfig(BaseModel):
    """Run-time model selection: switch alias, or bump `revision` to re-resolve the same alias."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model_alias: str | None = Field(None, pattern=ID_PATTERN)
    revision: int = Field(0, ge=0)


class _BundleHolder:
    """Loads the bundle at start and on reconfigure; a failed reload keeps serving the old one."""

    def __init__(self, loader: BundleLoader, model_alias: str) -> None:
        self.loader = loader
        self.default_alias = model_alias
        self.selection: tuple[str, int] = (model_alias, 0)
        self.bundle = loader(model_alias)
        metrics.set_model_version(self.bundle.version)
        logger.info("%s serves bundle %s", type(self).__name__, self.bundle.version)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = ModelUserConfig.model_validate(user_config)
        selection = (config.model_alias or self.default_alias, config.revision)
        if selection == self.selection:
            return
        bundle = self.loader(selection[0])
        self.bundle, self.selection = bundle, selection
        metrics.set_model_version(bundle.version)
        logger.info(
            "%s reloaded: now serving %s (alias %s)", type(self).__name__, bundle.version, selection[0]
        )

    def version(self) -> str:
        return self.bundle.version


@serve.deployment
class LogisticRegressionModel(_BundleHolder):
    """The bundle's linear model: numpy over the whole batch, coefficients from JSON."""

    def predict(self, features: FloatArray) -> ModelOutput:
        bundle = self.bundle  # one reference, so a concurrent reload cannot mix versions in one answer
        metrics.observe_batch_size("LogisticRegressionModel", features.shape[0])
        return ModelOutput(
            bundle.version, bundle.lr.predict_proba(features), bundle.lr.contributions(features)
        )


@serve.deployment
class XGBoostModel(_BundleHolder):
    """The bundle's XGBoost booster (UBJ): probabilities and SHAP contributions for the whole batch."""

    def predict(self, features: FloatArray) -> ModelOutput:
        bundle = self.bundle
        metrics.observe_batch_size("XGBoostModel", features.shape[0])
        return ModelOutput(
            bundle.version, bundle.xgb.predict_proba(features), bundle.xgb.contributions(features)
        )
