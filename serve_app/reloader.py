"""Hot reload of the model bundle: checked atomic swaps, refusal of bad bundles, version pinning, polling."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from serve_app.bundle import BundleError, ModelBundle
from serve_app.features.contract import FEATURE_NAMES, FEATURE_VERSION

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Versions kept besides the active one, so requests pinned to the version before a swap still find it.
RETAINED_VERSIONS = 2
POLL_JITTER = 0.1  # +-10 %: replicas started together must not query the registry in lockstep


class BundleLoader(Protocol):
    """Where bundles come from (the MLflow registry in production)."""

    def __call__(self, alias: str) -> ModelBundle:
        """The bundle `alias` points at now (also records it as the alias's last good version)."""
        ...

    def resolve(self, alias: str) -> str | None:
        """The version `alias` points at now (a cheap query); None if the alias does not exist."""
        ...

    def load_version(self, version: str) -> ModelBundle:
        """Exactly this version."""
        ...


class VersionUnavailableError(LookupError):
    """This replica cannot serve the bundle version a request was pinned to."""


class RefreshOutcome(BaseModel):
    """What one replica did when asked to follow its alias; the admin endpoint returns a list of these."""

    model_config = ConfigDict(extra="forbid")

    holder: str = Field(description="Deployment and replica that answered")
    status: Literal["swapped", "unchanged", "refused", "failed"]
    version: str = Field(description="The version this replica serves now")
    previous_version: str | None = Field(None, description="What it served before, if it swapped")
    candidate_version: str | None = Field(None, description="What the alias pointed at")
    held_versions: list[str] = Field(description="Versions it can serve pinned requests with")
    detail: str | None = None


def check_servable(bundle: ModelBundle) -> None:
    """The serving contract plus one smoke prediction, before a bundle may serve; raises BundleError.

    `load_bundle` already checks the files; this also guards bundles from any other loader and proves that
    both models score a row (the bundle's own fill values) to a finite probability of the right shape.
    """
    if tuple(bundle.feature_names) != FEATURE_NAMES:
        raise BundleError(f"bundle {bundle.version}: feature list differs from the serving contract")
    if bundle.feature_version != FEATURE_VERSION:
        raise BundleError(
            f"bundle {bundle.version}: feature_version {bundle.feature_version!r} is not {FEATURE_VERSION!r}"
        )
    row = np.asarray(bundle.history_fill, dtype=np.float64).reshape(1, -1)
    outputs = {}
    for name, model in (("logistic regression", bundle.lr), ("xgboost", bundle.xgb)):
        try:
            probability, contributions = model.predict_proba(row), model.contributions(row)
        except Exception as exc:  # whatever breaks inside a model, the bundle is refused, not served
            raise BundleError(f"bundle {bundle.version}: {name} cannot score a row ({exc})") from None
        if probability.shape != (1,) or contributions.shape != (1, len(FEATURE_NAMES)):
            raise BundleError(f"bundle {bundle.version}: {name} answers in the wrong shape")
        outputs[name] = probability
    combined = bundle.combine(outputs["logistic regression"], outputs["xgboost"])
    for probability in (*outputs.values(), combined):
        if not np.all(np.isfinite(probability)) or np.any((probability < 0) | (probability > 1)):
            raise BundleError(f"bundle {bundle.version}: probability {probability} is not in [0, 1]")


@dataclass(frozen=True)
class _Snapshot:
    """Replaced whole on every change, so a reader sees one consistent state without taking a lock."""

    active: ModelBundle
    held: Mapping[str, ModelBundle]  # the active one and the retained ones, oldest first


class ModelReloader:
    """Holds the served bundle of one replica and swaps it atomically when the alias moves.

    A candidate is loaded and checked completely before the reference changes; a bundle that fails is
    refused, logged, remembered (versions are immutable, so polling does not retry it) and the old one keeps
    serving. Recent versions stay held, so a request pinned to one is served by exactly that version.
    """

    def __init__(
        self,
        loader: BundleLoader,
        alias: str,
        *,
        name: str,
        retained: int = RETAINED_VERSIONS,
        on_swap: Callable[[str], None] | None = None,
    ) -> None:
        self.loader = loader
        self.alias = alias
        self.name = name
        self.retained = retained
        self.on_swap = on_swap
        bundle = loader(alias)
        check_servable(bundle)  # a replica that would start on a bad bundle fails its deploy instead
        self._snapshot = _Snapshot(bundle, {bundle.version: bundle})
        # Serialises loads and swaps; readers (every request) never take it.
        self._lock = threading.Lock()
        self._refused: dict[str, str] = {}

    @property
    def bundle(self) -> ModelBundle:
        """The active bundle: what unpinned requests and new batches are scored with."""
        return self._snapshot.active

    def held_versions(self) -> list[str]:
        return list(self._snapshot.held)

    def bundle_for(self, version: str | None) -> ModelBundle:
        """The bundle of `version` (the active one for None), loading that exact version if not held."""
        snapshot = self._snapshot
        if version is None:
            return snapshot.active
        held = snapshot.held.get(version)
        return held if held is not None else self._load_pinned(version)

    def fallback_for(self, version: str) -> ModelBundle | None:
        """The most recent other held bundle: where a batch goes when `version` cannot be served."""
        others = [b for v, b in self._snapshot.held.items() if v != version]
        return others[-1] if others else None

    def pending_version(self) -> str | None:
        """The version a refresh would switch to now; None when there is nothing to do (or no registry)."""
        try:
            candidate = self.loader.resolve(self.alias)
        except Exception as exc:  # the registry being down is routine for a poller: keep serving
            logger.warning("%s: cannot resolve alias %s (%s)", self.name, self.alias, type(exc).__name__)
            return None
        if candidate is None or candidate == self.bundle.version or candidate in self._refused:
            return None
        return candidate

    def refresh(self, *, retry_refused: bool = False) -> RefreshOutcome:
        """Re-resolve the alias and swap to what it points at if that bundle is sound. Never raises."""
        with self._lock:
            before = self._snapshot.active.version
            try:
                candidate = self.loader.resolve(self.alias)
            except Exception as exc:  # registry down: keep serving, try again at the next poll
                logger.warning("%s: cannot resolve alias %s (%s)", self.name, self.alias, type(exc).__name__)
                return self._outcome("failed", None, None, f"registry unreachable ({type(exc).__name__})")
            if candidate is None:
                logger.warning("%s: alias %s does not exist; still serving %s", self.name, self.alias, before)
                return self._outcome("failed", None, None, f"alias {self.alias!r} does not exist")
            if candidate == before:
                return self._outcome("unchanged", None, candidate)
            if candidate in self._refused and not retry_refused:
                return self._outcome("refused", None, candidate, self._refused[candidate])
            bundle = self._snapshot.held.get(candidate)
            if bundle is None:
                try:
                    # By alias, not by version: this also moves the alias's last-good pointer in the cache.
                    bundle = self.loader(self.alias)
                    check_servable(bundle)
                except BundleError as exc:
                    self._refused[candidate] = str(exc)
                    logger.error(
                        "%s: refused bundle %s of alias %s, still serving %s: %s",
                        self.name,
                        candidate,
                        self.alias,
                        before,
                        exc,
                    )
                    return self._outcome("refused", None, candidate, str(exc))
                except Exception as exc:  # a failed download is not a verdict on the bundle: retried later
                    logger.warning("%s: loading %s failed (%s)", self.name, candidate, type(exc).__name__)
                    return self._outcome("failed", None, candidate, f"load failed ({type(exc).__name__})")
                if bundle.version == before:  # the alias moved back while we loaded
                    return self._outcome("unchanged", None, candidate)
            self._refused.pop(bundle.version, None)
            self._install(bundle, activate=True)
            logger.info(
                "%s: now serving %s (alias %s, was %s)", self.name, bundle.version, self.alias, before
            )
            if self.on_swap is not None:
                self.on_swap(bundle.version)
            return self._outcome("swapped", before, candidate)

    def _load_pinned(self, version: str) -> ModelBundle:
        with self._lock:
            held = self._snapshot.held.get(version)
            if held is not None:  # loaded by a concurrent request while this one waited
                return held
            if version in self._refused:
                raise VersionUnavailableError(f"{self.name} refused version {version}")
            try:
                bundle = self.loader.load_version(version)
                check_servable(bundle)
            except BundleError as exc:
                self._refused[version] = str(exc)
                logger.error("%s: refused pinned version %s: %s", self.name, version, exc)
                raise VersionUnavailableError(f"{self.name} refused version {version}") from None
            except Exception as exc:
                raise VersionUnavailableError(
                    f"{self.name} cannot load version {version} ({type(exc).__name__})"
                ) from None
            logger.info("%s: loaded version %s for pinned requests", self.name, version)
            self._install(bundle, activate=False)
            return bundle

    def _install(self, bundle: ModelBundle, *, activate: bool) -> None:
        """Add `bundle` to the held versions (and make it active), dropping the oldest beyond `retained`."""
        snapshot = self._snapshot
        active = bundle if activate else snapshot.active
        others = [b for v, b in snapshot.held.items() if v not in (bundle.version, active.version)]
        if not activate:
            others.append(bundle)
        kept = others[len(others) - self.retained :] if self.retained else []
        held = {b.version: b for b in (*kept, active)}
        self._snapshot = _Snapshot(active, held)  # one assignment: the swap readers see

    def _outcome(
        self, status: str, previous: str | None, candidate: str | None, detail: str | None = None
    ) -> RefreshOutcome:
        return RefreshOutcome.model_validate(
            {
                "holder": self.name,
                "status": status,
                "version": self.bundle.version,
                "previous_version": previous,
                "candidate_version": candidate,
                "held_versions": self.held_versions(),
                "detail": detail,
            }
        )


async def run_pinned(reloader: ModelReloader, attempt: Callable[[ModelBundle], Awaitable[T]]) -> T:
    """Run one batch pinned to the active bundle; if a model cannot serve that version, once more pinned to
    the previous one. Either way every part of the answer comes from the one version it was pinned to."""
    pinned = reloader.bundle
    try:
        return await attempt(pinned)
    except VersionUnavailableError:
        fallback = reloader.fallback_for(pinned.version)
        if fallback is None:
            raise
        logger.warning(
            "%s: the models cannot serve %s; scoring the batch with %s",
            reloader.name,
            pinned.version,
            fallback.version,
        )
        return await attempt(fallback)


class AliasPoller:
    """Calls `tick` every `interval_s` on the running event loop; a failing tick is logged, never fatal."""

    def __init__(self, tick: Callable[[], Awaitable[object]], name: str) -> None:
        self.tick = tick
        self.name = name
        self.interval_s = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def set_interval(self, interval_s: float) -> None:
        """(Re)start polling every `interval_s` seconds; 0 stops it. Call from the event loop's thread."""
        if interval_s < 0:
            raise ValueError(f"poll interval must be >= 0, got {interval_s}")
        if interval_s == self.interval_s and (self.running or interval_s == 0):
            return
        self.stop()
        self.interval_s = interval_s
        if interval_s > 0:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"poll-{self.name}")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s * random.uniform(1 - POLL_JITTER, 1 + POLL_JITTER))
            try:
                await self.tick()
            except Exception:
                logger.exception("%s: polling the model alias failed; trying again next time", self.name)
