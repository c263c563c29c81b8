"""The graph's work done in one process, no Ray, no HTTP: store, both models, rules, scoring.

The baseline app (one FastAPI process) and the benchmark's compute floor both run this. It calls the
very functions the graph's deployments call (feature_fetcher, bundle, rules, scoring), so any difference
in the benchmark is the cost of the serving architecture, not of different work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from serve_app.breaker import CircuitBreaker
from serve_app.bundle import ModelBundle, load_bundle
from serve_app.feature_fetcher import FeatureBatch, degraded_features, request_columns
from serve_app.features.derive import derive_features
from serve_app.features.online import (
    OnlineFeatureStore,
    OnlineStoreError,
    StoreEvent,
    SyncOnlineFeatureStore,
)
from serve_app.rules import TEXT_FIELDS, RuleSet, rule_context
from serve_app.schemas import ScoreResponse, Transaction
from serve_app.scoring import RuleVerdicts, score_batch
from serve_app.settings import get_settings
from serve_app.stages import predict_both

logger = logging.getLogger(__name__)
DEFAULT_RULES = Path(__file__).resolve().parent.parent / "configs" / "rules.yaml"


def load_serving_bundle(bundle_dir: Path | None = None) -> ModelBundle:
    """A bundle saved in a directory, or the registered one the graph would serve (FRAUD_MODEL_*)."""
    if bundle_dir is not None:
        return load_bundle(bundle_dir, version=f"local:{bundle_dir.name}")
    from serve_app.model_store import load_registered_bundle  # MLflow only when used

    settings = get_settings()
    return load_registered_bundle(
        settings.model_name, settings.model_alias, settings.tracking_uri, settings.data_dir / "model_cache"
    )


class InProcessScorer:
    """Scores transactions the way the graph does, with every stage a plain call in this process."""

    def __init__(self, bundle: ModelBundle, rule_set: RuleSet) -> None:
        self.bundle = bundle
        self.rule_set = rule_set

    def score_features(self, transactions: Sequence[Transaction], batch: FeatureBatch) -> list[ScoreResponse]:
        """Models, rules and scoring over a batch whose features are known (the CPU-bound part)."""
        bundle, x = self.bundle, batch.features
        lr, xgb = predict_both(x, bundle)
        text = {name: [getattr(t, name) for t in transactions] for name in TEXT_FIELDS}
        outcomes = self.rule_set.evaluate(rule_context(x, batch.degraded, text))
        verdicts = RuleVerdicts(hits=[o.hits for o in outcomes], actions=[o.action for o in outcomes])
        ids = [t.transaction_id for t in transactions]
        return score_batch(bundle, ids, x, batch.degraded, lr, xgb, verdicts)

    def features_from_raw(
        self, transactions: Sequence[Transaction], raw: dict[str, np.ndarray] | None
    ) -> FeatureBatch:
        req = request_columns(transactions)
        n = len(transactions)
        if raw is None:
            return FeatureBatch(degraded_features(req, self.bundle.history_fill), np.ones(n, dtype=bool))
        return FeatureBatch(derive_features(raw, req), np.zeros(n, dtype=bool))

    def score_sync(
        self, transactions: Sequence[Transaction], store: SyncOnlineFeatureStore
    ) -> list[ScoreResponse]:
        """Blocking: one pipelined store call for the batch, then the CPU part (the compute floor)."""
        raw = store.fetch_and_update([StoreEvent.from_transaction(t) for t in transactions])
        return self.score_features(transactions, self.features_from_raw(transactions, raw))


class AsyncStoreScorer(InProcessScorer):
    """The baseline's scorer: the asyncio store client with the graph's deadline and circuit breaker."""

    def __init__(
        self, bundle: ModelBundle, rule_set: RuleSet, redis_url: str, timeout_s: float = 0.05
    ) -> None:
        super().__init__(bundle, rule_set)
        self.store = OnlineFeatureStore(redis_url, timeout_s=timeout_s)
        self.deadline_s = 2 * timeout_s + 0.01  # as FeatureFetcher: the client's own retry fits inside
        self.breaker = CircuitBreaker(failure_threshold=3, reset_after_s=2.0)

    async def fetch_raw(self, transactions: Sequence[Transaction]) -> dict[str, np.ndarray] | None:
        """Raw aggregates, or None (degraded) when the store fails or the breaker is open."""
        if not self.breaker.allow():
            return None
        events = [StoreEvent.from_transaction(t) for t in transactions]
        try:
            raw = await asyncio.wait_for(self.store.fetch_and_update(events), timeout=self.deadline_s)
        except (OnlineStoreError, TimeoutError) as exc:
            self.breaker.record_failure()
            logger.warning(
                "feature store failed (%s); %d transactions degraded", type(exc).__name__, len(events)
            )
            return None
        self.breaker.record_success()
        return raw

    async def score(self, transactions: Sequence[Transaction]) -> list[ScoreResponse]:
        raw = await self.fetch_raw(transactions)
        return self.score_features(transactions, self.features_from_raw(transactions, raw))

    async def ready(self) -> bool:
        return await self.store.ping()

    async def aclose(self) -> None:
        await self.store.aclose()
