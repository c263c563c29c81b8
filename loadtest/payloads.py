"""Realistic transaction payloads drawn from the generator's customers and merchants, deterministic per seed.

The population (ids, home locations, habitual merchants, amount levels) is learnt from a generated data set,
so load-test traffic hits the same customers the models were trained on and exercises the velocity windows.
Timestamps follow the wall clock ("now") and never go backwards within one stream; ids carry a run token so
a rerun against the same Redis is not answered from the idempotency cache.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import pandas as pd

Payload = dict[str, Any]
Clock = Callable[[], float]  # seconds since the epoch, like time.time

HABITS_PER_CUSTOMER = 14  # the generator's own maximum number of habitual merchants
LOCAL_RADIUS_KM = 60.0  # "near home": a city and its suburbs
BURST_CATEGORIES = ("digital_goods", "online_retail", "subscription")
REQUIRED_COLUMNS = (
    "customer_id",
    "merchant_id",
    "amount",
    "merchant_category",
    "channel",
    "currency",
    "lat",
    "lon",
)


@dataclass(frozen=True)
class Merchant:
    merchant_id: str
    category: str
    channel: str
    currency: str
    lat: float | None
    lon: float | None


@dataclass(frozen=True)
class Customer:
    customer_id: str
    home_lat: float | None  # median location of the customer's located payments
    home_lon: float | None
    spend_level: float  # multiplies the category's median amount
    habit_share: float  # share of payments that go to a habitual merchant
    habits: tuple[int, ...]  # merchant indices, most frequent first
    habit_cum_weights: tuple[float, ...]


@dataclass(frozen=True)
class Population:
    """Everything payloads are drawn from; build it once per process with `population_from_*`."""

    customers: tuple[Customer, ...]
    customer_cum_weights: tuple[float, ...]  # busy customers pay more often, as in the data
    merchants: tuple[Merchant, ...]
    merchant_cum_weights: tuple[float, ...]  # popularity
    category_median: dict[str, float]
    category_sigma: dict[str, float]

    def merchant_indices(self, categories: tuple[str, ...]) -> list[int]:
        return [i for i, m in enumerate(self.merchants) if m.category in categories]


def _optional(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def population_from_transactions(df: pd.DataFrame) -> Population:
    """Learn customers, merchants and amount profiles from a generated (or user) transaction frame."""
    missing = sorted(set(REQUIRED_COLUMNS) - set(df.columns))
    if missing:
        raise ValueError(f"transactions lack column(s) {missing} needed to build a payload population")
    genuine = df[df["is_fraud"] == 0] if "is_fraud" in df.columns else df
    if genuine.empty:
        raise ValueError("no genuine transactions to learn the population from")

    merch = df.groupby("merchant_id", sort=True).agg(
        category=("merchant_category", "first"),
        channel=("channel", "first"),
        currency=("currency", "first"),
        lat=("lat", "first"),
        lon=("lon", "first"),
        n=("amount", "size"),
    )
    merchant_index = {mid: i for i, mid in enumerate(merch.index)}
    merchants = tuple(
        Merchant(
            str(mid), str(r.category), str(r.channel), str(r.currency), _optional(r.lat), _optional(r.lon)
        )
        for mid, r in zip(merch.index, merch.itertuples(index=False), strict=True)
    )

    log_amount = np.log(genuine["amount"].to_numpy(dtype=np.float64))
    cat_log_median = genuine.assign(la=log_amount).groupby("merchant_category")["la"].median()
    relative = log_amount - cat_log_median.loc[genuine["merchant_category"]].to_numpy()
    frame = genuine.assign(rel=relative)
    level = frame.groupby("customer_id", sort=True)["rel"].median()
    # What is left after category and customer level is the per-payment noise of the category.
    noise = frame["rel"].to_numpy() - level.loc[frame["customer_id"]].to_numpy()
    sigma = pd.Series(noise).groupby(frame["merchant_category"].to_numpy()).std().fillna(0.5)

    pair = genuine.groupby(["customer_id", "merchant_id"], sort=False).size().rename("n").reset_index()
    pair = pair.sort_values(["customer_id", "n", "merchant_id"], ascending=[True, False, True])
    top = pair[pair.groupby("customer_id", sort=False).cumcount() < HABITS_PER_CUSTOMER]
    habits = {
        cid: (
            tuple(merchant_index[m] for m in g["merchant_id"]),
            tuple(itertools.accumulate(g["n"].tolist())),
        )
        for cid, g in top.groupby("customer_id", sort=True)
    }
    per_customer = genuine.groupby("customer_id", sort=True).agg(
        n=("amount", "size"), home_lat=("lat", "median"), home_lon=("lon", "median")
    )
    habitual = top.groupby("customer_id", sort=True)["n"].sum()
    customers = tuple(
        Customer(
            customer_id=str(cid),
            home_lat=_optional(r.home_lat),
            home_lon=_optional(r.home_lon),
            spend_level=float(math.exp(level.loc[cid])),
            # Few payments say little about habits: assume half go to known merchants.
            habit_share=float(habitual.loc[cid] / r.n) if r.n >= 5 else 0.5,
            habits=habits[cid][0],
            habit_cum_weights=tuple(float(w) for w in habits[cid][1]),
        )
        for cid, r in zip(per_customer.index, per_customer.itertuples(index=False), strict=True)
    )
    return Population(
        customers=customers,
        customer_cum_weights=tuple(itertools.accumulate(float(n) for n in per_customer["n"].to_numpy())),
        merchants=merchants,
        merchant_cum_weights=tuple(itertools.accumulate(float(n) for n in merch["n"].to_numpy())),
        category_median={str(k): float(math.exp(v)) for k, v in cat_log_median.items()},
        category_sigma={str(k): float(v) for k, v in sigma.items()},
    )


@functools.cache
def population_from_generator(
    customers: int = 4000, merchants: int = 800, days: int = 60, seed: int = 7
) -> Population:
    """The population of `train.generate` with the given size (defaults: the default training data)."""
    from train.generate import GeneratorConfig, generate  # heavy (pandas run); only when asked for

    return population_from_transactions(generate(GeneratorConfig(customers, merchants, days, seed)))


def rfc3339_ms(epoch_ms: int) -> str:
    return (
        datetime.fromtimestamp(epoch_ms / 1000.0, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def new_run_token() -> str:
    """A short token unique per run (ms since the epoch in base 36) that keeps transaction ids fresh."""
    n, digits = int(time.time() * 1000), "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = digits[r] + out
    return out


class PayloadFactory:
    """An endless, seeded stream of genuine-looking transactions with timestamps advancing from now."""

    def __init__(
        self,
        population: Population,
        seed: int = 0,
        stream: int = 0,
        run_token: str | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.population = population
        self.rng = random.Random(f"{seed}/{stream}")
        self.id_prefix = f"lt{run_token or new_run_token()}-{seed}-{stream}-"
        self.clock = clock
        self.counter = 0
        self.last_ms = 0
        self._local: dict[int, tuple[list[int], list[float]]] = {}

    def next_timestamp_ms(self) -> int:
        # Strictly increasing per stream, so windows see a well-defined order even within one millisecond.
        self.last_ms = max(int(self.clock() * 1000), self.last_ms + 1)
        return self.last_ms

    def next_id(self) -> str:
        self.counter += 1
        return f"{self.id_prefix}{self.counter}"

    def transaction(self) -> Payload:
        """One payment of a customer drawn by activity, at a habitual or a nearby merchant."""
        pop = self.population
        c_idx = bisect.bisect_left(pop.customer_cum_weights, self.rng.random() * pop.customer_cum_weights[-1])
        customer = pop.customers[min(c_idx, len(pop.customers) - 1)]
        if customer.habits and self.rng.random() < customer.habit_share:
            m_idx = self.rng.choices(customer.habits, cum_weights=customer.habit_cum_weights)[0]
        else:
            pool, cum = self._local_pool(c_idx, customer)
            m_idx = pool[min(bisect.bisect_left(cum, self.rng.random() * cum[-1]), len(pool) - 1)]
        merchant = pop.merchants[m_idx]
        return self._payload(customer, merchant, self._amount(customer, merchant), self.next_timestamp_ms())

    def batch(self, size: int) -> list[Payload]:
        if not 1 <= size <= 1000:
            raise ValueError(f"batch size must be in [1, 1000], got {size}")
        return [self.transaction() for _ in range(size)]

    def __iter__(self) -> Iterator[Payload]:
        while True:
            yield self.transaction()

    def _amount(self, customer: Customer, merchant: Merchant) -> float:
        median = self.population.category_median.get(merchant.category, 30.0)
        sigma = self.population.category_sigma.get(merchant.category, 0.5)
        raw = median * customer.spend_level * math.exp(self.rng.gauss(0.0, sigma))
        if merchant.channel == "atm":
            raw = max(round(raw / 10.0), 1.0) * 10.0  # cash comes out in notes
        return round(min(max(raw, 0.5), 200_000.0), 2)

    def _local_pool(self, c_idx: int, customer: Customer) -> tuple[list[int], list[float]]:
        """Online merchants plus located ones near home, weighted by popularity (cached per customer)."""
        cached = self._local.get(c_idx)
        if cached is not None:
            return cached
        pop = self.population
        popularity = np.diff(np.asarray((0.0, *pop.merchant_cum_weights)))
        lat = np.array([np.nan if m.lat is None else m.lat for m in pop.merchants])
        lon = np.array([np.nan if m.lon is None else m.lon for m in pop.merchants])
        near: npt.NDArray[np.bool_] = np.isnan(lat)
        if customer.home_lat is not None and customer.home_lon is not None:
            km = _haversine_km(customer.home_lat, customer.home_lon, lat, lon)
            near = near | (km <= LOCAL_RADIUS_KM)
        idx = np.flatnonzero(near) if near.any() else np.arange(len(pop.merchants))
        result = ([int(i) for i in idx], list(itertools.accumulate(float(w) for w in popularity[idx])))
        self._local[c_idx] = result
        return result

    def _payload(self, customer: Customer, merchant: Merchant, amount: float, ts_ms: int) -> Payload:
        body: Payload = {
            "transaction_id": self.next_id(),
            "timestamp": rfc3339_ms(ts_ms),
            "customer_id": customer.customer_id,
            "merchant_id": merchant.merchant_id,
            "amount": amount,
            "currency": merchant.currency,
            "merchant_category": merchant.category,
            "channel": merchant.channel,
        }
        if merchant.lat is not None and merchant.lon is not None:
            body["lat"], body["lon"] = merchant.lat, merchant.lon
        return body


def _haversine_km(
    lat1: float, lon1: float, lat2: npt.NDArray[np.float64], lon2: npt.NDArray[np.float64]
) -> Any:
    p1, p2 = math.radians(lat1), np.radians(lat2)
    a = np.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * np.cos(p2) * np.sin(np.radians(lon2 - lon1) / 2) ** 2
    return 2 * 6371.0088 * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


class TimedPayload(NamedTuple):
    at_s: float  # seconds after the burst's start: when to send it (its timestamp says the same)
    body: Payload


def fraud_burst(
    factory: PayloadFactory,
    customers: int = 3,
    per_customer: int = 15,
    within_s: float = 10.0,
) -> list[TimedPayload]:
    """Card testing: many small online payments of a few customers at many merchants within seconds.

    Customers come from the factory's population (so their history is real); payloads share the factory's
    id space, clock and randomness, and are returned in send order.
    """
    if customers < 1 or per_customer < 1 or not within_s > 0:
        raise ValueError("fraud_burst needs customers >= 1, per_customer >= 1 and within_s > 0")
    pop, rng = factory.population, factory.rng
    shops = pop.merchant_indices(BURST_CATEGORIES) or list(range(len(pop.merchants)))
    victims = rng.sample(range(len(pop.customers)), min(customers, len(pop.customers)))
    offsets = sorted((rng.uniform(0.0, within_s), v) for v in victims for _ in range(per_customer))
    start_ms = factory.next_timestamp_ms()
    out: list[TimedPayload] = []
    for offset_s, victim in offsets:
        ts_ms = max(start_ms + int(offset_s * 1000), factory.last_ms + 1)
        factory.last_ms = ts_ms
        merchant = pop.merchants[rng.choice(shops)]
        amount = round(rng.uniform(0.5, 5.0), 2)
        body = factory._payload(pop.customers[victim], merchant, amount, ts_ms)
        out.append(TimedPayload((ts_ms - start_ms) / 1000.0, body))
    return out
