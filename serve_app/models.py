"""LogisticRegressionModel and XGBoostModel deployments: thin, vectorised, both from one bundle version."""

from __future__ import annotations

import asyncio
import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.exceptions import RayServeException

from serve_app import metrics
from serve_app.bundle import BundleError, ModelBundle, load_bundle
from serve_app.reloader import AliasPoller, BundleLoader, ModelReloader, RefreshOutcome
from serve_app.scoring import ModelOutput
from serve_app.settings import get_settings

logger = logging.getLogger(__name__)
FloatArray = npt.NDArray[np.float64]
DEFAULT_POLL_INTERVAL_S = 30.0

__all__ = [
    "BundleLoader",
    "DirectoryLoader",
    "LogisticRegressionModel",
    "ModelUserConfig",
    "RegistryLoader",
    "XGBoostModel",
]


@contextmanager
def cache_lock(cache_dir: Path) -> Iterator[None]:
    """One bundle load at a time per cache directory, across the replicas of a host that share it.

    The model store heals a cached bundle that fails its checks by deleting and downloading it again; when
    replicas load the same version together (a hot reload), that delete would pull files out from under
    another replica's read and turn a clear refusal into a puzzling one. Loads are rare; waiting is cheap.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / ".load.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class RegistryLoader:
    """Loads `models:/<name>@<alias>` through serve_app.model_store; None settings resolve in the replica."""

    model_name: str
    tracking_uri: str | None = None
    cache_dir: str | None = None

    def _where(self) -> tuple[str, Path]:
        settings = get_settings()
        cache_dir = Path(self.cache_dir) if self.cache_dir else settings.data_dir / "model_cache"
        return self.tracking_uri or settings.tracking_uri, cache_dir

    # MLflow is imported only inside these methods, where a bundle is looked up or loaded.
    def __call__(self, alias: str) -> ModelBundle:
        from serve_app.model_store import load_registered_bundle

        tracking_uri, cache_dir = self._where()
        with cache_lock(cache_dir):
            return load_registered_bundle(self.model_name, alias, tracking_uri, cache_dir)

    def resolve(self, alias: str) -> str | None:
        from serve_app.model_store import resolve_alias_version

        return resolve_alias_version(self.model_name, alias, self._where()[0])

    def load_version(self, version: str) -> ModelBundle:
        from serve_app.model_store import load_registered_version

        tracking_uri, cache_dir = self._where()
        with cache_lock(cache_dir):
            return load_registered_version(self.model_name, version, tracking_uri, cache_dir)


@dataclass(frozen=True)
class DirectoryLoader:
    """Serves a bundle written by `serve_app.bundle.save_bundle` (no registry: air-gapped or a test).

    Its one version never moves, so polling finds nothing to do; redeploy to serve another directory.
    """

    directory: str
    version: str = "local"

    def __call__(self, alias: str) -> ModelBundle:
        return load_bundle(Path(self.directory), version=self.version)

    def resolve(self, alias: str) -> str | None:
        return self.version

    def load_version(self, version: str) -> ModelBundle:
        if version != self.version:
            raise BundleError(f"{self.directory} holds version {self.version!r}, not {version!r}")
        return self(version)


class ModelUserConfig(BaseModel):
    """Run-time knobs of the model deployments (Serve user_config)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model_poll_interval_s: float = Field(
        DEFAULT_POLL_INTERVAL_S, ge=0.0, le=86_400.0, description="Check the alias this often; 0: never"
    )
    revision: int = Field(0, ge=0, description="Bump to make every replica re-resolve the alias now")


def replica_name(default: str) -> str:
    """`Deployment#replica` inside Serve (what the admin endpoint reports), else `default`."""
    try:
        context = serve.get_replica_context()
    except RayServeException:
        return default
    return f"{context.deployment}#{context.replica_tag}"


class _BundleServer:
    """One bundle version per answer, pinned by the caller; follows the alias by polling or on request."""

    def __init__(self, loader: BundleLoader, model_alias: str) -> None:
        name = replica_name(type(self).__name__)
        self.reloader = ModelReloader(loader, model_alias, name=name, on_swap=metrics.set_model_version)
        self.poller = AliasPoller(self._poll, name)
        self.revision = 0
        metrics.set_model_version(self.reloader.bundle.version)
        logger.info("%s serves bundle %s", name, self.reloader.bundle.version)

    @property
    def bundle(self) -> ModelBundle:
        return self.reloader.bundle

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Async so that the poller is started on the replica's event loop."""
        config = ModelUserConfig.model_validate(user_config)
        self.poller.set_interval(config.model_poll_interval_s)
        if config.revision != self.revision:
            self.revision = config.revision
            await self.reload()

    async def _poll(self) -> None:
        await asyncio.to_thread(self.reloader.refresh)

    async def reload(self) -> RefreshOutcome:
        """Re-resolve the alias now, retrying a version refused before (the admin endpoint broadcasts it)."""
        return await asyncio.to_thread(self.reloader.refresh, retry_refused=True)

    def version(self) -> str:
        return self.reloader.bundle.version

    def held_versions(self) -> list[str]:
        return self.reloader.held_versions()

    def _bundle(self, version: str | None) -> ModelBundle:
        # One reference for the whole answer, so a concurrent swap cannot mix versions within it.
        return self.reloader.bundle_for(version)


@serve.deployment
class LogisticRegressionModel(_BundleServer):
    """The bundle's linear model: numpy over the whole batch, coefficients from JSON."""

    def predict(self, features: FloatArray, version: str | None = None) -> ModelOutput:
        """`version` pins the bundle (the ingress always pins); raises VersionUnavailableError if unknown."""
        bundle = self._bundle(version)
        metrics.observe_batch_size("LogisticRegressionModel", features.shape[0])
        return ModelOutput(
            bundle.version, bundle.lr.predict_proba(features), bundle.lr.contributions(features)
        )


@serve.deployment
class XGBoostModel(_BundleServer):
    """The bundle's XGBoost booster (UBJ): probabilities and SHAP contributions for the whole batch."""

    def predict(self, features: FloatArray, version: str | None = None) -> ModelOutput:
        """`version` pins the bundle (the ingress always pins); raises VersionUnavailableError if unknown."""
        bundle = self._bundle(version)
        metrics.observe_batch_size("XGBoostModel", features.shape[0])
        return ModelOutput(
            bundle.version, bundle.xgb.predict_proba(features), bundle.xgb.contributions(features)
        )
