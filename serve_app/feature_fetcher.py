"""FeatureFetcher deployment: one pipelined Redis call per batch, degrading to request-only features."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt
from ray import serve

from serve_app import metrics
from serve_app.breaker import CircuitBreaker
from serve_app.features.contract import FEATURE_NAMES, REQUEST_ONLY_FEATURES
from serve_app.features.derive import RequestColumns, derive_features, request_features
from serve_app.features.online import LabelEvent, OnlineFeatureStore, OnlineStoreError, StoreEvent
from serve_app.log_redaction import install_record_redaction
from serve_app.pending_writes import PendingWrites
from serve_app.schemas import Feedback, Transaction
from serve_app.settings import get_settings

logger = logging.getLogger(__name__)
# Transactions per store deadline: about what Redis runs between two flushes of its replies.
STORE_CHUNK = 64
LABEL_TIMEOUT_S = 1.0
FloatArray = npt.NDArray[np.float64]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class FeatureBatch:
    """The model input for a batch (contract order) and, per row, whether history was unavailable."""

    features: FloatArray
    degraded: npt.NDArray[np.bool_]


def request_columns(transactions: Sequence[Transaction]) -> RequestColumns:
    events = [StoreEvent.from_transaction(t) for t in transactions]
    return RequestColumns.from_records(
        amount=[t.amount for t in transactions],
        ts_ms=[e.ts_ms for e in events],
        channel=[t.channel for t in transactions],
        lat=[t.lat for t in transactions],
        lon=[t.lon for t in transactions],
    )


def degraded_features(req: RequestColumns, history_fill: FloatArray | None) -> FloatArray:
    """Request-only features exact; every history column set to the bundle's fill value (or 0)."""
    n = len(req.amount)
    fill = (
        np.zeros(len(FEATURE_NAMES)) if history_fill is None else np.asarray(history_fill, dtype=np.float64)
    )
    if fill.shape != (len(FEATURE_NAMES),):
        raise ValueError(f"history_fill must have {len(FEATURE_NAMES)} values, got shape {fill.shape}")
    matrix = np.tile(fill, (n, 1))
    own = request_features(req)
    for name in REQUEST_ONLY_FEATURES:
        matrix[:, FEATURE_NAMES.index(name)] = own[name]
    return matrix


class StoreUnavailableError(RuntimeError):
    """The store could not take a write that must not be lost (a label); the client should retry."""


@serve.deployment
class FeatureFetcher:
    """Owns the replica's Redis client; scoring never fails because of Redis, labels fail loudly."""

    def __init__(
        self,
        redis_url: str | None = None,
        timeout_s: float = 0.05,
        breaker_failures: int = 3,
        breaker_reset_s: float = 2.0,
    ) -> None:
        url = redis_url or get_settings().store_url()
        if not url:
            raise ValueError(
                "FeatureFetcher needs a Redis URL: FRAUD_REDIS_URL, FRAUD_REDIS_URL_FILE or redis_url"
            )
        self.timeout_s = timeout_s
        # The client resends a call once after a dropped connection (never after a timeout); this deadline
        # bounds both tries.
        self.deadline_s = 2 * timeout_s + 0.01
        self.store = OnlineFeatureStore(url, timeout_s=timeout_s)
        # Labels get their own client with a patient socket: with appendfsync always a write waits for the
        # fsync, and a 50 ms socket timeout would make the client resend it and report 'unchanged'.
        self.label_store = OnlineFeatureStore(url, timeout_s=LABEL_TIMEOUT_S)
        # A store that answers, but late, costs as much as one that is down: each late call holds its
        # requests (and their slots at the edge). Half the timeout is far above a healthy call (~1-3 ms per
        # batch) and well below a stalled one; half of the last ten calls that slow opens the breaker.
        self.breaker = CircuitBreaker(
            failure_threshold=breaker_failures,
            reset_after_s=breaker_reset_s,
            slow_call_s=timeout_s / 2,
            slow_share=0.5,
            window=10,
        )
        # Scored degraded, recorded later: an outage must not erase transactions from the velocity windows.
        self.pending = PendingWrites()
        install_record_redaction(get_settings().api_key_list())

    async def fetch(self, transactions: list[Transaction], history_fill: FloatArray | None) -> FeatureBatch:
        """Features for a batch; on store failure or an open breaker, request-only features, degraded."""
        metrics.observe_batch_size("FeatureFetcher", len(transactions))
        req = request_columns(transactions)
        events = [StoreEvent.from_transaction(t) for t in transactions]
        if self.breaker.allow():
            started = time.perf_counter()
            try:
                # A 1000-transaction batch request is one pipeline too: give it a deadline per chunk.
                chunks = -(-len(events) // STORE_CHUNK)
                raw = await asyncio.wait_for(
                    self.store.fetch_and_update(events), timeout=self.deadline_s * chunks
                )
            except (OnlineStoreError, TimeoutError) as exc:
                self.breaker.record_failure()
                metrics.observe_store_latency(time.perf_counter() - started, ok=False)
                logger.warning(
                    "feature store failed (%s); scoring %d transactions degraded, breaker %s",
                    type(exc).__name__,
                    len(transactions),
                    self.breaker.state,
                )
            else:
                elapsed = time.perf_counter() - started
                self.breaker.record_success(elapsed / chunks)
                metrics.observe_store_latency(elapsed, ok=True)
                self.pending.drain_soon(self.store.fetch_and_update)
                return FeatureBatch(derive_features(raw, req), np.zeros(len(transactions), dtype=bool))
        self.pending.add(events)
        self.pending.drain_soon(self.store.fetch_and_update)  # retries in the background until it lands
        return FeatureBatch(degraded_features(req, history_fill), np.ones(len(transactions), dtype=bool))

    async def apply_labels(self, labels: list[Feedback]) -> list[str]:
        """Store labels durably: 'recorded' | 'unchanged' | 'corrected' | 'unknown' per label."""
        # Integer arithmetic, as the store does for transactions: float seconds * 1000 can land 1 ms short.
        events = [
            LabelEvent(f.transaction_id, f.is_fraud, (f.labelled_at - _EPOCH) // timedelta(milliseconds=1))
            for f in labels
        ]
        try:
            # Labels are rare and must not be lost: a longer deadline than scoring, and no breaker.
            statuses = await asyncio.wait_for(
                self.label_store.apply_labels(events), timeout=2 * LABEL_TIMEOUT_S
            )
        except (OnlineStoreError, TimeoutError) as exc:
            raise StoreUnavailableError(
                f"feature store unavailable, label not stored: {type(exc).__name__}"
            ) from None
        metrics.record_labels(len(labels), sum(1 for f in labels if f.is_fraud))
        return statuses

    async def ping(self) -> bool:
        try:
            alive = await asyncio.wait_for(self.store.ping(), timeout=max(0.5, self.deadline_s))
        except TimeoutError:
            return False
        if alive:  # readiness probes also wake the replay on a replica that gets no scoring traffic
            self.pending.drain_soon(self.store.fetch_and_update)
        return alive
