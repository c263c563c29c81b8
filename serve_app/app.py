"""The application builder: typed args -> the bound Serve graph (`import_path: serve_app.app:build_app`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application, Deployment

from serve_app.feature_fetcher import FeatureFetcher
from serve_app.ingress import Ingress
from serve_app.models import (
    BundleLoader,
    DirectoryLoader,
    LogisticRegressionModel,
    RegistryLoader,
    XGBoostModel,
)
from serve_app.rules import RuleEngine, RuleSet
from serve_app.schemas import ID_PATTERN
from serve_app.stages import FusedSpec

REPO_ROOT = Path(__file__).resolve().parents[1]


class AppArgs(BaseModel):
    """The `args:` block of serve_config.yaml. None means "from the replica's environment"."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model_name: str = Field("fraud-scorer", pattern=ID_PATTERN, description="Registered MLflow model name")
    model_alias: str = Field("champion", pattern=ID_PATTERN, description="Alias the graph serves")
    tracking_uri: str | None = Field(
        None, description="None: MLFLOW_TRACKING_URI, else FRAUD_DATA_DIR/mlflow.db"
    )
    model_cache_dir: str | None = Field(None, description="None: FRAUD_DATA_DIR/model_cache")
    bundle_dir: str | None = Field(
        None, description="Serve this save_bundle directory instead of the registry (air-gapped, tests)"
    )
    rules_path: str = Field(
        "configs/rules.yaml", min_length=1, description="Relative to the working directory"
    )
    redis_url: str | None = Field(None, description="None: FRAUD_REDIS_URL")
    max_body_bytes: int = Field(1_048_576, ge=1024, le=64 * 1_048_576)
    store_timeout_s: float = Field(0.05, gt=0.0, le=1.0, description="Per Redis call; one retry inside it")
    breaker_failures: int = Field(3, ge=1, le=100)
    breaker_reset_s: float = Field(2.0, gt=0.0, le=300.0)
    request_deadline_s: float = Field(
        2.0, gt=0.0, le=60.0, description="Past this a score request answers 504 (batches get more per 100)"
    )
    topology: Literal["graph", "fused"] = Field(
        "graph",
        description="graph: every stage its own deployment, scaled on its own (a cluster); fused: each "
        "ingress replica runs the stages in-process (one small machine, where hops cost more than the work)",
    )


def resolve_rules_path(rules_path: str) -> Path:
    """As given if it exists (absolute, or relative to the cwd), else relative to the repository."""
    path = Path(rules_path)
    if path.is_absolute() or path.exists():
        return path
    return REPO_ROOT / path


def _deployment(target: object) -> Deployment:
    """mypy cannot see that @serve.deployment made a class a Deployment; this checks it at run time."""
    if not isinstance(target, Deployment):
        raise TypeError(f"{target!r} is not a Serve deployment")
    return target


def build_app(args: dict[str, Any]) -> Application:
    """Bind Ingress(FeatureFetcher, LogisticRegressionModel, XGBoostModel, RuleEngine), or, fused, an
    Ingress that holds the four stages itself (serve_app.stages).

    The rule file is validated here, so a bad file fails the deploy with the rule and field named, and is
    handed to the RuleEngine as its user_config; a `user_config` for RuleEngine in serve_config.yaml
    replaces it at run time without a restart.
    """
    config = AppArgs.model_validate(args)
    rules = RuleSet.from_yaml(resolve_rules_path(config.rules_path))
    loader: BundleLoader = (
        DirectoryLoader(config.bundle_dir)
        if config.bundle_dir
        else RegistryLoader(config.model_name, config.tracking_uri, config.model_cache_dir)
    )
    if config.topology == "fused":
        spec = FusedSpec(
            config.redis_url,
            config.store_timeout_s,
            config.breaker_failures,
            config.breaker_reset_s,
            rules.to_config(),
        )
        return _deployment(Ingress).bind(
            None,
            None,
            None,
            None,
            loader,
            config.model_alias,
            config.max_body_bytes,
            config.request_deadline_s,
            spec,
        )
    fetcher = _deployment(FeatureFetcher).bind(
        config.redis_url, config.store_timeout_s, config.breaker_failures, config.breaker_reset_s
    )
    lr_model = _deployment(LogisticRegressionModel).bind(loader, config.model_alias)
    xgb_model = _deployment(XGBoostModel).bind(loader, config.model_alias)
    rule_engine = _deployment(RuleEngine).options(user_config=rules.to_config()).bind()
    return _deployment(Ingress).bind(
        fetcher,
        lr_model,
        xgb_model,
        rule_engine,
        loader,
        config.model_alias,
        config.max_body_bytes,
        config.request_deadline_s,
    )
