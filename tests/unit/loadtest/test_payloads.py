"""Payloads: valid, seeded, drawn from the generator's population; bursts that look like card testing."""

from __future__ import annotations

import itertools
import statistics
from collections import Counter
from datetime import datetime

import pandas as pd
import pytest

from loadtest.payloads import (
    BURST_CATEGORIES,
    PayloadFactory,
    Population,
    fraud_burst,
    population_from_transactions,
)
from serve_app.schemas import Transaction
from train.generate import GeneratorConfig, generate

START_S = 1_790_000_000.0  # a fixed "now" (epoch seconds), so two factories see the same clock


class StepClock:
    """A wall clock that advances by `step_s` on every reading (a stand-in for time passing)."""

    def __init__(self, start_s: float = START_S, step_s: float = 0.01) -> None:
        self.now, self.step = start_s, step_s

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture(scope="module")
def transactions() -> pd.DataFrame:
    return generate(GeneratorConfig(customers=300, merchants=80, days=14, seed=3))


@pytest.fixture(scope="module")
def population(transactions: pd.DataFrame) -> Population:
    return population_from_transactions(transactions)


def _factory(population: Population, seed: int = 1, stream: int = 0) -> PayloadFactory:
    return PayloadFactory(population, seed=seed, stream=stream, run_token="test", clock=StepClock())


def test_population_keeps_the_generators_ids_and_merchant_attributes(
    transactions: pd.DataFrame, population: Population
) -> None:
    genuine = transactions[transactions["is_fraud"] == 0]
    assert {c.customer_id for c in population.customers} == set(genuine["customer_id"])
    assert {m.merchant_id for m in population.merchants} == set(transactions["merchant_id"])
    first = transactions.groupby("merchant_id").first()
    for merchant in population.merchants:
        row = first.loc[merchant.merchant_id]
        assert (merchant.category, merchant.channel, merchant.currency) == (
            row["merchant_category"],
            row["channel"],
            row["currency"],
        )
        assert (merchant.lat is None) == pd.isna(row["lat"])


def test_every_payload_is_a_valid_transaction_with_fresh_ids_and_advancing_time(
    population: Population,
) -> None:
    payloads = _factory(population).batch(500)
    parsed = [Transaction.model_validate(p) for p in payloads]
    assert len({t.transaction_id for t in parsed}) == len(parsed)
    times = [t.timestamp_ms for t in parsed]
    assert all(b > a for a, b in itertools.pairwise(times))
    # Event time follows the clock: the first payload is stamped at the clock's first reading.
    assert abs(times[0] - (START_S + 0.01) * 1000) <= 1


def test_same_seed_same_payloads_other_seed_or_stream_other_payloads(population: Population) -> None:
    a = _factory(population, seed=7).batch(50)
    b = _factory(population, seed=7).batch(50)
    assert a == b
    assert _factory(population, seed=8).batch(50) != a
    other_stream = _factory(population, seed=7, stream=1).batch(50)
    assert other_stream != a
    assert not {p["transaction_id"] for p in other_stream} & {p["transaction_id"] for p in a}


def test_payloads_follow_the_population(population: Population) -> None:
    payloads = _factory(population, seed=11).batch(1000) + _factory(population, seed=12).batch(1000)
    customers = {c.customer_id: c for c in population.customers}
    merchants = {m.merchant_id: m for m in population.merchants}
    for p in payloads:
        merchant = merchants[p["merchant_id"]]
        assert p["customer_id"] in customers
        assert (p["merchant_category"], p["channel"], p["currency"]) == (
            merchant.category,
            merchant.channel,
            merchant.currency,
        )
        assert (p.get("lat"), p.get("lon")) == (merchant.lat, merchant.lon)
    # Most payments go to the customer's habitual merchants, as in the data they were learnt from.
    habitual = sum(
        population.merchants.index(merchants[p["merchant_id"]]) in customers[p["customer_id"]].habits
        for p in payloads
    )
    expected = statistics.fmean(customers[p["customer_id"]].habit_share for p in payloads)
    assert habitual / len(payloads) >= expected - 0.05
    # Busy customers pay more often: the most drawn customer is far busier than the median one.
    counts = Counter(p["customer_id"] for p in payloads)
    weights = [b - a for a, b in itertools.pairwise((0.0, *population.customer_cum_weights))]
    weight_of = {c.customer_id: w for c, w in zip(population.customers, weights, strict=True)}
    top = counts.most_common(1)[0][0]
    assert weight_of[top] > statistics.median(weights)


def test_amounts_follow_category_and_customer_level(population: Population) -> None:
    payloads = _factory(population, seed=5).batch(1000) + _factory(population, seed=6).batch(1000)
    by_category: dict[str, list[float]] = {}
    customers = {c.customer_id: c for c in population.customers}
    for p in payloads:
        level = customers[p["customer_id"]].spend_level
        by_category.setdefault(p["merchant_category"], []).append(p["amount"] / level)
    for category, relative in by_category.items():
        if len(relative) < 50 or category == "atm":  # ATM amounts are rounded to notes
            continue
        median = statistics.median(relative)
        assert median == pytest.approx(population.category_median[category], rel=0.35), category


def test_fraud_burst_is_many_small_online_payments_of_few_customers_within_seconds(
    population: Population,
) -> None:
    factory = _factory(population, seed=9)
    burst = fraud_burst(factory, customers=3, per_customer=12, within_s=6.0)
    assert len(burst) == 36
    bodies = [Transaction.model_validate(item.body) for item in burst]
    assert len({t.customer_id for t in bodies}) == 3
    assert all(t.amount <= 5.0 and t.merchant_category in BURST_CATEGORIES for t in bodies)
    assert len({t.merchant_id for t in bodies}) > 3  # many merchants, as card testers do
    offsets = [item.at_s for item in burst]
    assert offsets == sorted(offsets)
    assert offsets[-1] <= 6.0 + 0.05
    first: datetime = bodies[0].timestamp
    for item, tx in zip(burst, bodies, strict=True):
        assert (tx.timestamp - first).total_seconds() == pytest.approx(item.at_s - burst[0].at_s, abs=0.002)
    # The burst shares the factory's id space and clock: later payloads are newer and unique.
    after = factory.transaction()
    assert Transaction.model_validate(after).timestamp > bodies[-1].timestamp
    assert after["transaction_id"] not in {t.transaction_id for t in bodies}


def test_bad_arguments_are_refused_with_the_reason(
    population: Population, transactions: pd.DataFrame
) -> None:
    with pytest.raises(ValueError, match="batch size"):
        _factory(population).batch(0)
    with pytest.raises(ValueError, match="fraud_burst needs"):
        fraud_burst(_factory(population), customers=0)
    with pytest.raises(ValueError, match=r"\['merchant_category'\]"):
        population_from_transactions(transactions.drop(columns=["merchant_category"]))
