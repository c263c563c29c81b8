"""MLflow logging of a training run and registration of its bundle as one model version (no pickle)."""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
import pandas as pd
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking._tracking_service import utils as tracking_utils
from mlflow.types import ColSpec, Schema, TensorSpec

import serve_app
from serve_app.bundle import ModelBundle, save_bundle
from serve_app.settings import Settings

CHAMPION = "champion"
MODEL_ARTIFACT_NAME = "model"
PYFUNC_SCRIPT = Path(__file__).with_name("pyfunc_model.py")
_PYFUNC_REQUIREMENTS = ("mlflow", "numpy", "pandas", "xgboost", "pydantic")
_LOCAL_SCHEMES = ("", "file", "sqlite")


@dataclass(frozen=True)
class RegisteredVersion:
    """What the CLI prints and the tuner compares: where the bundle now lives in the registry."""

    name: str
    version: str
    alias: str | None
    run_id: str
    model_uri: str


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else the SQLite store under FRAUD_DATA_DIR."""
    return Settings().tracking_uri


def _is_local_store(tracking_uri: str) -> bool:
    return urlparse(tracking_uri).scheme in _LOCAL_SCHEMES


def ensure_experiment(name: str, tracking_uri: str) -> str:
    """The experiment's id, creating it if needed; on a local store its artifacts go under the data dir
    (MLflow's default would be ./mlruns relative to wherever the command happens to run)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return str(existing.experiment_id)
    location = None
    if _is_local_store(tracking_uri):
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "experiment"
        root = Path(Settings().artifact_root) / slug
        root.mkdir(parents=True, exist_ok=True)
        location = root.resolve().as_uri()
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except MlflowException:
        # Another process (a parallel Tune trial) may have created it between our lookup and create.
        created = client.get_experiment_by_name(name)
        if created is None:
            raise
        return str(created.experiment_id)


@contextmanager
def _using_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (start_run, log_model: they only read the process-global URI) at `uri`
    for the block, then restore both the global and MLFLOW_TRACKING_URI, which set_tracking_uri also
    overwrites; a library call must not redirect the caller's later MLflow use."""
    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    global_before: str | None = tracking_utils._tracking_uri
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        tracking_utils.set_tracking_uri(global_before)  # type: ignore[arg-type]  # None means "unset"
        if env_before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env_before


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version an alias points at, or None when the model or the alias does not exist."""
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def _finite_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    # MLflow stores NaN, but a NaN "best" metric breaks comparisons in the UI and in promotion code.
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


def _requirements() -> list[str]:
    pins = []
    for package in _PYFUNC_REQUIREMENTS:
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


def _signature(feature_names: tuple[str, ...]) -> ModelSignature:
    inputs: list[ColSpec | TensorSpec] = [ColSpec("double", n) for n in feature_names]
    outputs: list[ColSpec | TensorSpec] = [
        *(ColSpec("double", n) for n in ("fraud_probability", "p_lr", "p_xgb")),
        ColSpec("string", "decision"),
    ]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def _stage_code(directory: Path) -> Path:
    """A clean copy of the serve_app package for the pyfunc's code path (sources only, no caches)."""
    source = Path(serve_app.__file__).parent
    target = directory / "serve_app"
    shutil.copytree(
        source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pkl", "*.pickle")
    )
    return target


def log_and_register(
    bundle: ModelBundle,
    *,
    experiment: str,
    model_name: str,
    tracking_uri: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    figure: Figure | None = None,
    data_summary: Mapping[str, Any] | None = None,
    alias: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> RegisteredVersion:
    """One MLflow run (params, metrics, PR plot, features, data summary) whose bundle becomes one version
    of `model_name`. Alias: `alias` if given; otherwise `champion` only when no champion exists yet."""
    experiment_id = ensure_experiment(experiment, tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    with tempfile.TemporaryDirectory(prefix="fraud-bundle-") as tmp, _using_tracking_uri(tracking_uri):
        bundle_dir = Path(tmp) / "bundle"
        save_bundle(bundle, bundle_dir)
        code_dir = _stage_code(Path(tmp) / "code")
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=dict(tags or {})) as run:
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            mlflow.log_metrics(_finite_metrics(metrics))
            if figure is not None:
                mlflow.log_figure(figure, "pr_curve.png")
            features = {
                "feature_names": list(bundle.feature_names),
                "feature_version": bundle.feature_version,
            }
            mlflow.log_dict(features, "features.json")
            mlflow.log_dict(dict(data_summary or {}), "training_data_summary.json")
            info = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT_NAME,
                python_model=str(PYFUNC_SCRIPT),
                artifacts={"bundle": str(bundle_dir)},
                code_paths=[str(code_dir)],
                registered_model_name=model_name,
                signature=_signature(bundle.feature_names),
                # Two typical rows: MLflow scores them through the pyfunc at log time, proving it loads.
                input_example=pd.DataFrame([bundle.history_fill] * 2, columns=list(bundle.feature_names)),
                pip_requirements=_requirements(),
            )
            run_id = run.info.run_id
    version_id = str(info.registered_model_version)
    client.set_model_version_tag(model_name, version_id, "feature_version", bundle.feature_version)
    for key, value in _finite_metrics(metrics).items():
        if key.startswith("holdout_"):
            client.set_model_version_tag(model_name, version_id, key, f"{value:.6f}")
    chosen = alias
    if chosen is None and alias_version(client, model_name, CHAMPION) is None:
        chosen = CHAMPION
    if chosen is not None:
        client.set_registered_model_alias(model_name, chosen, version_id)
    return RegisteredVersion(
        name=model_name,
        version=version_id,
        alias=chosen,
        run_id=run_id,
        model_uri=f"models:/{model_name}/{version_id}",
    )
