"""FeatureFetcher on a real Redis (no Ray): store-backed features, and degraded mode when Redis is gone."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from serve_app.feature_fetcher import FeatureFetcher, degraded_features, request_columns
from serve_app.features.contract import FEATURE_NAMES
from serve_app.redis_server import free_port
from serve_app.schemas import Feedback, Transaction

pytestmark = pytest.mark.integration
FILL = np.full(len(FEATURE_NAMES), 7.0)
START = datetime(2026, 2, 1, 12, 0, tzinfo=UTC)


def _fetcher(redis_url: str) -> FeatureFetcher:
    # The class under the @serve.deployment decorator: the same code a replica runs, without Ray.
    cls = FeatureFetcher.func_or_class  # type: ignore[attr-defined]
    return cls(redis_url=redis_url, timeout_s=0.05, breaker_failures=2, breaker_reset_s=60.0)


def _tx(i: int, minutes: int) -> Transaction:
    return Transaction(
        transaction_id=f"ff-{i}",
        timestamp=START + timedelta(minutes=minutes),
        customer_id="cust-ff",
        merchant_id="merch-ff",
        amount=10.0 + i,
    )


def test_history_comes_from_the_store_and_labels_are_stored(redis_url: str) -> None:
    async def scenario() -> None:
        fetcher = _fetcher(redis_url)
        first = await fetcher.fetch([_tx(0, 0), _tx(1, 5), _tx(2, 10)], FILL)
        assert not first.degraded.any()
        count_1h = first.features[:, FEATURE_NAMES.index("cust_count_1h")]
        np.testing.assert_array_equal(count_1h, [0.0, 1.0, 2.0])
        again = await fetcher.fetch([_tx(2, 10)], FILL)  # idempotent: the same answer as the first time
        np.testing.assert_array_equal(again.features[0], first.features[2])
        label = Feedback(transaction_id="ff-1", is_fraud=True, labelled_at=START + timedelta(days=1))
        unknown = Feedback(transaction_id="ff-404", is_fraud=True, labelled_at=START + timedelta(days=1))
        assert await fetcher.apply_labels([label, unknown]) == ["recorded", "unknown"]
        assert await fetcher.ping()
        await fetcher.store.aclose()

    asyncio.run(scenario())


def test_dead_redis_degrades_instead_of_failing_and_the_breaker_opens() -> None:
    async def scenario() -> None:
        fetcher = _fetcher(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
        txs = [_tx(0, 0), _tx(1, 1)]
        for _ in range(2):
            batch = await fetcher.fetch(txs, FILL)
            assert batch.degraded.all()
            np.testing.assert_array_equal(batch.features, degraded_features(request_columns(txs), FILL))
        assert fetcher.breaker.state == "open"
        started = time.perf_counter()
        batch = await fetcher.fetch(txs, FILL)  # the breaker answers at once, no connection attempt
        assert batch.degraded.all()
        assert time.perf_counter() - started < 0.05
        assert not await fetcher.ping()

    asyncio.run(scenario())


def test_labels_fail_loudly_when_the_store_is_down() -> None:
    async def scenario() -> None:
        fetcher = _fetcher(f"redis://127.0.0.1:{free_port()}/0")
        label = Feedback(transaction_id="ff-1", is_fraud=False, labelled_at=START)
        with pytest.raises(RuntimeError, match="label not stored"):
            await fetcher.apply_labels([label])

    asyncio.run(scenario())
