"""Fetch a registered bundle by alias from MLflow, cached per version so serving survives an MLflow outage."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from serve_app.bundle import BUNDLE_JSON, BundleError, ModelBundle, load_bundle

logger = logging.getLogger(__name__)
# Where `mlflow.pyfunc.log_model(artifacts={"bundle": ...})` puts the bundle inside the model directory.
BUNDLE_ARTIFACT_PATH = "artifacts/bundle"
_MISSING_CODES = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


class ModelStoreError(RuntimeError):
    """No bundle can be served: the alias does not exist, or the registry is down and nothing is cached."""


class _Pointer(BaseModel):
    """The last version that was downloaded and loaded successfully for one name@alias."""

    model_config = ConfigDict(extra="ignore")

    name: str
    alias: str
    version: str
    saved_at: str


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text) or "_"


def _model_dir(cache_dir: Path, name: str) -> Path:
    return cache_dir / _slug(name)


def _pointer_path(cache_dir: Path, name: str, alias: str) -> Path:
    return _model_dir(cache_dir, name) / f"{_slug(alias)}.last-good.json"


def resolve_alias_version(name: str, alias: str, tracking_uri: str) -> str | None:
    """The version `name@alias` points at; None if the model or alias does not exist. Raises if the
    registry cannot be reached."""
    # Imported here so `import serve_app` (every Serve replica) does not pay for importing mlflow.
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code in _MISSING_CODES:
            return None
        raise


def _download(name: str, version: str, tracking_uri: str, target: Path) -> None:
    """Download the version's bundle artifacts into `target` atomically (rename of a complete temp dir)."""
    import mlflow
    from mlflow import MlflowClient

    # Resolve the storage location with our own client: a "models:/" URI would be resolved against the
    # process-global registry URI, which need not be `tracking_uri`.
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    model_root = client.get_model_version_download_uri(name, version).rstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{version}-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{model_root}/{BUNDLE_ARTIFACT_PATH}", dst_path=tmp, tracking_uri=tracking_uri
        )
        staged = Path(tmp) / "complete"
        shutil.move(local, staged)
        if target.exists() and not (target / BUNDLE_JSON).is_file():
            shutil.rmtree(target, ignore_errors=True)  # not a bundle this code produced (renames are atomic)
        try:
            os.replace(staged, target)
        except OSError:
            # Another replica on this host finished the same (immutable) version first: use theirs.
            if not (target / BUNDLE_JSON).is_file():
                raise


def _write_pointer(cache_dir: Path, name: str, alias: str, version: str) -> None:
    path = _pointer_path(cache_dir, name, alias)
    pointer = _Pointer(name=name, alias=alias, version=version, saved_at=datetime.now(UTC).isoformat())
    tmp = path.with_suffix(".tmp")
    tmp.write_text(pointer.model_dump_json(), encoding="utf-8")
    os.replace(tmp, path)


def _read_pointer(cache_dir: Path, name: str, alias: str) -> _Pointer | None:
    path = _pointer_path(cache_dir, name, alias)
    try:
        return _Pointer.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None


def _load_cached(cache_dir: Path, name: str, alias: str, reason: Exception) -> ModelBundle:
    pointer = _read_pointer(cache_dir, name, alias)
    if pointer is None:
        raise ModelStoreError(
            f"cannot reach the model registry for {name}@{alias} ({type(reason).__name__}: {reason}) "
            "and no bundle is cached"
        ) from reason
    logger.warning(
        "model registry unreachable (%s); serving cached %s version %s",
        type(reason).__name__,
        name,
        pointer.version,
    )
    return load_bundle(_model_dir(cache_dir, name) / _slug(pointer.version), version=pointer.version)


def load_registered_bundle(name: str, alias: str, tracking_uri: str, cache_dir: Path) -> ModelBundle:
    """Resolve `name@alias`, download its bundle once per version into `cache_dir`, and load it.

    If the registry (or its artifact store) cannot be reached, the last version that loaded successfully
    for this alias is served from the cache. A registry that answers "no such alias", or a bundle that
    fails its checks, is an error: serving an older model then would hide a real problem.
    """
    cache_dir = Path(cache_dir)
    _model_dir(cache_dir, name).mkdir(parents=True, exist_ok=True)
    try:
        version = resolve_alias_version(name, alias, tracking_uri)
    except Exception as exc:  # any transport/storage failure: the cache is the fallback by design
        return _load_cached(cache_dir, name, alias, exc)
    if version is None:
        raise ModelStoreError(
            f"registered model {name!r} has no alias {alias!r}; train one with `python -m train`"
        )
    directory = _model_dir(cache_dir, name) / _slug(version)
    cached = (directory / BUNDLE_JSON).is_file()
    if cached:
        try:
            bundle = load_bundle(directory, version=version)
        except BundleError:
            # A damaged cache entry (disk trouble, a hand edit) heals by downloading the version again.
            logger.warning(
                "cached bundle %s version %s failed its checks; downloading it again", name, version
            )
            shutil.rmtree(directory, ignore_errors=True)
            cached = False
    if not cached:
        try:
            _download(name, version, tracking_uri, directory)
        except Exception as exc:
            return _load_cached(cache_dir, name, alias, exc)
        bundle = load_bundle(directory, version=version)
    _write_pointer(cache_dir, name, alias, version)
    return bundle


def load_registered_version(name: str, version: str, tracking_uri: str, cache_dir: Path) -> ModelBundle:
    """One exact version (not an alias), from the cache when it is there and sound, else downloaded.

    Hot reload pins requests to a version; a replica that does not hold it yet loads exactly that one.
    The alias's last-good pointer is left alone: only `load_registered_bundle` moves it.
    """
    directory = _model_dir(Path(cache_dir), name) / _slug(version)
    if (directory / BUNDLE_JSON).is_file():
        try:
            return load_bundle(directory, version=version)
        except BundleError:
            shutil.rmtree(directory, ignore_errors=True)  # damaged entry: heal by downloading again
    _download(name, version, tracking_uri, directory)
    return load_bundle(directory, version=version)
