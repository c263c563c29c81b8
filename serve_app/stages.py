"""The stages behind the ingress (features, both models, rules), reached over Serve handles or in-process.

Two topologies run the same stage classes. `graph`: FeatureFetcher, LogisticRegressionModel, XGBoostModel
and RuleEngine are deployments of their own, each scaled on its own (a cluster, or an XGBoost stage on
bigger nodes). `fused`: every ingress replica holds one instance of each and calls them directly. On a
2-core machine a Serve hop costs about 1-2 ms of CPU on each side while LR and the rules cost well under
a millisecond per batch, so the hops, not the work, decide throughput and latency there (measured numbers
in README, "Load tests"). The ingress talks to a `Stages` and does not know which topology it runs in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

import numpy as np
import numpy.typing as npt
from ray.serve.handle import DeploymentHandle

from serve_app import metrics
from serve_app.admin import reload_models
from serve_app.bundle import ModelBundle
from serve_app.feature_fetcher import FeatureBatch, FeatureFetcher
from serve_app.reloader import RefreshOutcome
from serve_app.rules import RuleOutcome, RuleSet, rule_context
from serve_app.schemas import Feedback, Transaction
from serve_app.scoring import ModelOutput

FloatArray = npt.NDArray[np.float64]
Text = dict[str, list[str | None]]
T = TypeVar("T")


class Stages(Protocol):
    """What the ingress needs from the rest of the graph, whatever the topology."""

    topology: str

    async def fetch(self, transactions: list[Transaction], history_fill: FloatArray | None) -> FeatureBatch:
        """Features for a batch (and the store updated with it)."""
        ...

    async def predict(self, features: FloatArray, bundle: ModelBundle) -> tuple[ModelOutput, ModelOutput]:
        """LR and XGBoost outputs, both from exactly `bundle`'s version."""
        ...

    async def evaluate(
        self, features: FloatArray, degraded: npt.NDArray[np.bool_], text: Text
    ) -> list[RuleOutcome]: ...

    async def apply_labels(self, labels: list[Feedback]) -> list[str]: ...

    async def probe(self, version: str) -> tuple[bool, bool]:
        """(store reachable, both models hold `version`)."""
        ...

    async def reload_models(self) -> list[RefreshOutcome]:
        """Model replicas re-resolve the alias (graph); nothing to do when the ingress holds the models."""
        ...

    def model_handles(self) -> Mapping[str, DeploymentHandle]: ...


class RemoteStages:
    """The `graph` topology: every stage is a deployment, every call one hop carrying a whole batch."""

    topology = "graph"

    def __init__(
        self,
        fetcher: DeploymentHandle,
        lr_model: DeploymentHandle,
        xgb_model: DeploymentHandle,
        rule_engine: DeploymentHandle,
    ) -> None:
        self.fetcher = fetcher
        self.lr_model = lr_model
        self.xgb_model = xgb_model
        self.rule_engine = rule_engine

    async def fetch(self, transactions: list[Transaction], history_fill: FloatArray | None) -> FeatureBatch:
        batch: FeatureBatch = await self.fetcher.fetch.remote(transactions, history_fill)
        return batch

    async def predict(self, features: FloatArray, bundle: ModelBundle) -> tuple[ModelOutput, ModelOutput]:
        lr, xgb = await asyncio.gather(
            self.lr_model.predict.remote(features, bundle.version),
            self.xgb_model.predict.remote(features, bundle.version),
        )
        return lr, xgb

    async def evaluate(
        self, features: FloatArray, degraded: npt.NDArray[np.bool_], text: Text
    ) -> list[RuleOutcome]:
        outcomes: list[RuleOutcome] = await self.rule_engine.evaluate.remote(features, degraded, text)
        return outcomes

    async def apply_labels(self, labels: list[Feedback]) -> list[str]:
        statuses: list[str] = await self.fetcher.apply_labels.remote(labels)
        return statuses

    async def probe(self, version: str) -> tuple[bool, bool]:
        store_ok, lr_held, xgb_held = await asyncio.gather(
            self.fetcher.ping.remote(),
            self.lr_model.held_versions.remote(),
            self.xgb_model.held_versions.remote(),
        )
        # Mid-reload the models may already serve a newer version: fine while they hold ours too.
        return bool(store_ok), version in lr_held and version in xgb_held

    async def reload_models(self) -> list[RefreshOutcome]:
        return await reload_models(self.model_handles())

    def model_handles(self) -> Mapping[str, DeploymentHandle]:
        return {"LogisticRegressionModel": self.lr_model, "XGBoostModel": self.xgb_model}


@dataclass(frozen=True)
class FusedSpec:
    """What an ingress replica needs to hold every stage itself (the `fused` topology)."""

    redis_url: str | None
    store_timeout_s: float
    breaker_failures: int
    breaker_reset_s: float
    rules: dict[str, Any]  # RuleSet.to_config(): validated by build_app before the deploy


def plain_class(deployment: type[T]) -> type[T]:
    """The class under @serve.deployment, to instantiate in this process."""
    return cast(type[T], getattr(deployment, "func_or_class", deployment))


def predict_both(features: FloatArray, bundle: ModelBundle) -> tuple[ModelOutput, ModelOutput]:
    """Both models of one bundle over a batch: probabilities and per-feature contributions."""
    lr = ModelOutput(bundle.version, bundle.lr.predict_proba(features), bundle.lr.contributions(features))
    xgb = ModelOutput(bundle.version, bundle.xgb.predict_proba(features), bundle.xgb.contributions(features))
    return lr, xgb


class LocalStages:
    """The `fused` topology: the stage classes called in the ingress replica, no hop, same code.

    The models are the ingress's own pinned bundle, so there is no version to look up and nothing to
    mix; the rules are swapped whole by `set_rules` (the ingress's user_config)."""

    topology = "fused"

    def __init__(self, spec: FusedSpec) -> None:
        self.fetcher = plain_class(FeatureFetcher)(
            spec.redis_url, spec.store_timeout_s, spec.breaker_failures, spec.breaker_reset_s
        )
        self.rule_set = RuleSet.from_config(spec.rules)

    def set_rules(self, document: dict[str, Any]) -> None:
        # Validated completely before the swap, so a bad update leaves the old rules in force.
        self.rule_set = RuleSet.from_config(document)

    async def fetch(self, transactions: list[Transaction], history_fill: FloatArray | None) -> FeatureBatch:
        return await self.fetcher.fetch(transactions, history_fill)

    async def predict(self, features: FloatArray, bundle: ModelBundle) -> tuple[ModelOutput, ModelOutput]:
        # In a worker thread: XGBoost releases the GIL, so the event loop keeps parsing requests and reading
        # Redis replies meanwhile (a 1000-row batch would otherwise stall every store deadline on the
        # replica), and a stuck predict still lets the request deadline answer 504.
        for deployment in ("LogisticRegressionModel", "XGBoostModel"):
            metrics.observe_batch_size(deployment, features.shape[0])
        return await asyncio.to_thread(predict_both, features, bundle)

    async def evaluate(
        self, features: FloatArray, degraded: npt.NDArray[np.bool_], text: Text
    ) -> list[RuleOutcome]:
        metrics.observe_batch_size("RuleEngine", features.shape[0])
        return self.rule_set.evaluate(rule_context(features, degraded, text))

    async def apply_labels(self, labels: list[Feedback]) -> list[str]:
        return await self.fetcher.apply_labels(labels)

    async def probe(self, version: str) -> tuple[bool, bool]:
        return await self.fetcher.ping(), True

    async def reload_models(self) -> list[RefreshOutcome]:
        return []

    def model_handles(self) -> Mapping[str, DeploymentHandle]:
        return {}
