"""The simulated world, the genuine bursts that mimic fraud, and the five labelled fraud scenarios."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from serve_app.features.contract import DAY_MS, HOUR_MS
from serve_app.features.derive import haversine_km

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

POS, ONLINE, ATM = 0, 1, 2
CHANNEL_NAMES = ("pos", "online", "atm")
MINUTE_MS = 60_000
SCENARIOS = (
    "card_testing",
    "account_takeover",
    "compromised_merchant",
    "night_high_value",
    "impossible_travel",
)
# Share of the fraud-row budget each scenario gets.
_SHARE = {
    "card_testing": 0.30,
    "account_takeover": 0.20,
    "compromised_merchant": 0.22,
    "night_high_value": 0.12,
    "impossible_travel": 0.16,
}
_SMALL_TICKET = ("digital_goods", "online_retail", "subscription")
_HIGH_TICKET = ("electronics", "jewelry", "travel", "online_retail", "clothing")
_FAR_KM = 1500.0


@dataclass
class Rows:
    """Transactions column-wise, as indices into the world's customers and merchants."""

    customer: IntArray
    merchant: IntArray
    ts_ms: IntArray
    amount: FloatArray

    def __len__(self) -> int:
        return len(self.ts_ms)

    def take(self, index: IntArray | BoolArray) -> Rows:
        return Rows(self.customer[index], self.merchant[index], self.ts_ms[index], self.amount[index])

    @staticmethod
    def concat(parts: Sequence[Rows]) -> Rows:
        return Rows(
            np.concatenate([p.customer for p in parts]).astype(np.int64),
            np.concatenate([p.merchant for p in parts]).astype(np.int64),
            np.concatenate([p.ts_ms for p in parts]).astype(np.int64),
            np.concatenate([p.amount for p in parts]).astype(np.float64),
        )


@dataclass(frozen=True)
class World:
    """Cities, categories, merchants and customer profiles; everything a scenario needs to look plausible."""

    start_ms: int
    days: int
    city_lat: FloatArray
    city_lon: FloatArray
    home_cities: IntArray  # cities where customers live (the others are only visited)
    cat_names: tuple[str, ...]
    cat_median: FloatArray
    cat_sigma: FloatArray
    m_cat: IntArray
    m_channel: IntArray
    m_city: IntArray  # -1 for online merchants
    m_lat: FloatArray
    m_lon: FloatArray
    m_factor: FloatArray  # merchant-specific price level
    c_city: IntArray
    c_scale: FloatArray  # customer spending level (big spenders are 4-12x)
    c_night: BoolArray  # night-shift customers: genuine night activity
    hour_p: FloatArray  # (2, 24) hour-of-day distributions: day people, night-shift people
    day_p: FloatArray  # distribution over the days of the period (weekly pattern)

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.days * DAY_MS

    def merchants(
        self, cats: Sequence[str] | None = None, channels: Sequence[int] = (POS, ONLINE, ATM), city: int = -2
    ) -> IntArray:
        """Merchant indices by category, channel and city (-2: any city)."""
        ok = np.isin(self.m_channel, channels)
        if cats is not None:
            ok &= np.isin(self.m_cat, [self.cat_names.index(c) for c in cats])
        if city != -2:
            ok &= self.m_city == city
        return np.flatnonzero(ok).astype(np.int64)

    def times(self, customer: IntArray, rng: np.random.Generator) -> IntArray:
        """Event times with the weekly pattern and each customer's (day or night-shift) diurnal pattern."""
        n = len(customer)
        day = rng.choice(self.days, n, p=self.day_p)
        night = self.c_night[customer]
        hour = rng.choice(24, n, p=self.hour_p[0])
        hour[night] = rng.choice(24, int(night.sum()), p=self.hour_p[1])
        return self.start_ms + day * DAY_MS + hour * HOUR_MS + rng.integers(0, HOUR_MS, n)

    def amounts(self, merchant: IntArray, customer: IntArray, rng: np.random.Generator) -> FloatArray:
        """Genuine-looking amounts: category scale x customer level x merchant price level x noise."""
        cat = self.m_cat[merchant]
        raw = (
            self.cat_median[cat]
            * self.c_scale[customer]
            * self.m_factor[merchant]
            * np.exp(rng.normal(0.0, 1.0, len(merchant)) * self.cat_sigma[cat])
        )
        # Cash comes out of ATMs in notes.
        raw = np.where(self.m_channel[merchant] == ATM, np.maximum(np.round(raw / 10.0), 1.0) * 10.0, raw)
        return np.round(np.clip(raw, 0.5, 200_000.0), 2).astype(np.float64)

    def pick_in_city(
        self, city: IntArray, cats: Sequence[str] | None, rng: np.random.Generator, fallback: IntArray
    ) -> IntArray:
        """A located (pos/atm) merchant in each row's city; `fallback` where the city has none."""
        out = np.empty(len(city), dtype=np.int64)
        for c in np.unique(city):
            rows = np.flatnonzero(city == c)
            pool = self.merchants(cats, (POS, ATM), int(c))
            out[rows] = rng.choice(pool if len(pool) else fallback, len(rows))
        return out


def _no_rows() -> Rows:
    empty = np.zeros(0, dtype=np.int64)
    return Rows(empty, empty, empty, np.zeros(0))


def _at_least(counts: IntArray, k: int) -> IntArray:
    """Indices with counts >= k, else with counts > 0, else all: scenarios always find victims."""
    for ok in (counts >= k, counts > 0, np.ones(len(counts), dtype=bool)):
        if ok.any():
            return np.flatnonzero(ok).astype(np.int64)
    return np.arange(len(counts), dtype=np.int64)


def _event_index(sizes: IntArray) -> tuple[IntArray, IntArray]:
    """For events of the given sizes: the event of each row and the row's position inside its event."""
    event = np.repeat(np.arange(len(sizes)), sizes)
    first = np.repeat(np.cumsum(sizes) - sizes, sizes)
    return event, np.arange(len(event)) - first


def _offsets(sizes: IntArray, gap_ms: FloatArray, rng: np.random.Generator) -> IntArray:
    """Cumulative random gaps inside each event, starting at 0 for the first row."""
    event, pos = _event_index(sizes)
    gaps = rng.exponential(1.0, len(event)) * gap_ms[event]
    gaps[pos == 0] = 0.0
    return _cumulative(gaps, sizes)


def _cumulative(gaps: FloatArray | IntArray, sizes: IntArray) -> IntArray:
    """Running sum of the gaps inside each event (the first gap of each event must be 0)."""
    total = np.cumsum(gaps)
    return (total - np.repeat(total[np.cumsum(sizes) - sizes], sizes)).astype(np.int64)


def _event_starts(world: World, n: int, rng: np.random.Generator, tail_ms: int) -> IntArray:
    # Leave two days of history first so the victim's behaviour is known, and room for the event.
    lo = world.start_ms + min(2, world.days // 3) * DAY_MS
    return rng.integers(lo, max(world.end_ms - tail_ms, lo + 1), n)


def in_app_sessions(world: World, shop: IntArray, rng: np.random.Generator) -> Rows:
    """Genuine bursts of small online payments at the customer's app store (-1: none): card testing's twin."""
    gamers = np.flatnonzero(shop >= 0)
    sessions = np.repeat(gamers, rng.poisson(world.days * 0.1, len(gamers)))
    sizes = rng.integers(2, 8, len(sessions))
    event, pos = _event_index(sizes)
    cust = sessions[event]
    t0 = world.times(sessions, rng)
    step = rng.integers(MINUTE_MS, 8 * MINUTE_MS, len(cust))
    step[pos == 0] = 0
    ts = t0[event] + _cumulative(step, sizes)
    amount = rng.choice([0.99, 1.99, 2.99, 4.99, 9.99], len(cust))
    return Rows(cust, shop[cust], ts, amount).take(ts < world.end_ms)


def card_testing(world: World, n_events: int, rng: np.random.Generator) -> Rows:
    """Bursts of tiny online payments at a few merchants within minutes, sometimes then a real purchase."""
    small = world.merchants(_SMALL_TICKET, (ONLINE,))
    big = world.merchants(("electronics", "online_retail"), (ONLINE,))
    cust = rng.integers(0, len(world.c_city), n_events)
    t0 = _event_starts(world, n_events, rng, 3 * HOUR_MS)
    sizes = rng.integers(5, 31, n_events)
    event, _ = _event_index(sizes)
    ts = t0[event] + _offsets(sizes, rng.uniform(10_000, 60_000, n_events), rng)
    shops = rng.choice(small, (n_events, 5))
    n_shops = rng.integers(2, 6, n_events)
    merch = shops[event, rng.integers(0, 1 << 30, len(event)) % n_shops[event]]
    amount = np.round(rng.uniform(0.5, 5.0, len(event)), 2)
    # The tester sells on (or uses) the card once it is proven: one larger purchase shortly after.
    follow = np.flatnonzero(rng.random(n_events) < 0.4)
    end = np.maximum.reduceat(ts, np.cumsum(sizes) - sizes)[follow]
    extra = Rows(
        cust[follow],
        rng.choice(big, len(follow)),
        end + rng.integers(2 * MINUTE_MS, 60 * MINUTE_MS, len(follow)),
        np.round(rng.uniform(150.0, 1500.0, len(follow)), 2),
    )
    return Rows.concat([Rows(cust[event], merch, ts, amount), extra])


def account_takeover(
    world: World, typical: FloatArray, active: IntArray, n_events: int, rng: np.random.Generator
) -> Rows:
    """Several purchases far above the customer's own level at merchants new to them, over a day or two."""
    cust = rng.choice(active, n_events)
    sizes = rng.integers(2, 7, n_events)
    event, _ = _event_index(sizes)
    t0 = _event_starts(world, n_events, rng, 2 * DAY_MS)
    ts = t0[event] + _offsets(sizes, rng.uniform(0.5, 5.0, n_events) * HOUR_MS, rng)
    c = cust[event]
    online = rng.random(len(event)) < 0.7
    merch = world.pick_in_city(world.c_city[c], _HIGH_TICKET, rng, world.merchants(_HIGH_TICKET, (ONLINE,)))
    merch[online] = rng.choice(world.merchants(_HIGH_TICKET, (ONLINE,)), int(online.sum()))
    amount = np.round(np.clip(typical[c] * rng.uniform(5.0, 20.0, len(event)), 20.0, 20_000.0), 2)
    return Rows(c, merch, ts, amount)


def compromised_merchant(world: World, genuine: Rows, budget: int, rng: np.random.Generator) -> Rows:
    """A few terminals compromised for 5-12 days; a large share of their payments then are fraud."""
    located = world.merchants(None, (POS,))
    located = located[np.isin(world.m_city[located], world.home_cities)]
    if len(located) == 0:
        return _no_rows()
    traffic = np.bincount(genuine.merchant, minlength=len(world.m_cat))[located]
    # Ordinary terminals, neither idle nor the busiest: many small compromises generalise better than one
    # huge one, and the fraud still has normal traffic to hide in.
    lo_t, hi_t = np.quantile(traffic, [0.2, 0.6])
    candidates = rng.permutation(located[(traffic >= lo_t) & (traffic <= hi_t) & (traffic > 0)])
    parts: list[Rows] = []
    phase = rng.random()
    # Genuine payments keyed by (merchant, time): one searchsorted counts a merchant's window.
    span = world.days * DAY_MS + 1
    keys = np.sort(genuine.merchant * span + (genuine.ts_ms - world.start_ms))
    for m in candidates:
        if budget <= 0:
            break
        dur = int(rng.integers(5, 13)) if world.days > 14 else max(2, world.days // 3)
        # Golden-ratio spacing spreads the compromises over the period instead of clumping them by chance.
        spot = (phase + len(parts) * 0.6180339887) % 1.0
        first_day = min(2, world.days - dur) + int(spot * (world.days - dur - min(2, world.days - dur) + 1))
        lo_hi = np.searchsorted(keys, [m * span + first_day * DAY_MS, m * span + (first_day + dur) * DAY_MS])
        seen = int(lo_hi[1] - lo_hi[0])
        share = rng.uniform(0.6, 0.8)
        k = max(3, round(seen * share / (1 - share)))
        if parts and k > 1.3 * budget:
            continue  # too busy for what is left of the budget; a smaller share would not stand out
        day = rng.integers(first_day, first_day + dur, k)
        ts = world.start_ms + day * DAY_MS + rng.choice(24, k, p=world.hour_p[0]) * HOUR_MS
        ts = ts + rng.integers(0, HOUR_MS, k)
        locals_ = np.flatnonzero(world.c_city == world.m_city[m])
        locals_ = locals_ if len(locals_) else np.arange(len(world.c_city))
        cust = np.where(rng.random(k) < 0.7, rng.choice(locals_, k), rng.integers(0, len(world.c_city), k))
        merch = np.full(k, m, dtype=np.int64)
        parts.append(Rows(cust, merch, ts, world.amounts(merch, cust, rng)))
        budget -= k
    return Rows.concat(parts) if parts else _no_rows()


def night_high_value(
    world: World, typical: FloatArray, day_people: IntArray, n_events: int, rng: np.random.Generator
) -> Rows:
    """Large payments between 0 and 5 UTC, at new merchants, by customers who never shop at night."""
    cust = rng.choice(day_people, n_events)
    sizes = rng.integers(1, 4, n_events)
    event, _ = _event_index(sizes)
    day = (_event_starts(world, n_events, rng, DAY_MS) - world.start_ms) // DAY_MS
    t0 = world.start_ms + day * DAY_MS + rng.integers(0, 5 * HOUR_MS, n_events)
    ts = t0[event] + _offsets(sizes, rng.uniform(3.0, 20.0, n_events) * MINUTE_MS, rng)
    c = cust[event]
    merch = world.pick_in_city(world.c_city[c], _HIGH_TICKET, rng, world.merchants(_HIGH_TICKET, (ONLINE,)))
    online = rng.random(len(event)) < 0.5
    merch[online] = rng.choice(world.merchants(_HIGH_TICKET, (ONLINE,)), int(online.sum()))
    amount = np.round(np.clip(typical[c] * rng.uniform(6.0, 20.0, len(event)), 100.0, 20_000.0), 2)
    return Rows(c, merch, ts, amount)


def impossible_travel(world: World, genuine: Rows, n_events: int, rng: np.random.Generator) -> Rows:
    """Card-present payments thousands of km from the customer's previous located payment, within 2 hours."""
    geo = np.flatnonzero(
        (world.m_channel[genuine.merchant] != ONLINE)
        & (genuine.ts_ms >= world.start_ms + DAY_MS)
        & (genuine.ts_ms < world.end_ms - 4 * HOUR_MS)
    )
    if len(geo) == 0:
        return _no_rows()
    prev = genuine.take(rng.choice(geo, n_events))
    lat, lon = world.m_lat[prev.merchant], world.m_lon[prev.merchant]
    dist = haversine_km(lat[:, None], lon[:, None], world.city_lat[None, :], world.city_lon[None, :])
    # Pick, for each event, a random city far enough away (ties broken by random keys).
    keys = np.where(dist >= _FAR_KM, rng.random(dist.shape), -1.0)
    city = np.argmax(keys, axis=1)
    sizes = rng.integers(1, 3, n_events)
    event, _ = _event_index(sizes)
    first = prev.ts_ms + rng.integers(10 * MINUTE_MS, 120 * MINUTE_MS, n_events)
    ts = first[event] + _offsets(sizes, rng.uniform(5.0, 30.0, n_events) * MINUTE_MS, rng)
    merch = world.pick_in_city(city[event], None, rng, world.merchants(None, (POS,)))
    c = prev.customer[event]
    amount = np.round(world.amounts(merch, c, rng) * rng.uniform(1.0, 3.0, len(event)), 2)
    return Rows(c, merch, ts, amount)


def inject_fraud(
    world: World, genuine: Rows, fraud_rate: float, rng: np.random.Generator
) -> list[tuple[str, Rows]]:
    """All five scenarios, sized so fraud is about `fraud_rate` of the final rows."""
    budget = max(len(SCENARIOS), round(fraud_rate * len(genuine) / (1.0 - fraud_rate)))
    counts = np.bincount(genuine.customer, minlength=len(world.c_city))
    spent = np.bincount(genuine.customer, weights=genuine.amount, minlength=len(world.c_city))
    # The customer's mean genuine amount: what history features compare account takeovers against.
    typical = np.divide(spent, counts, out=np.full(len(counts), genuine.amount.mean()), where=counts > 0)
    # Victims with some history (falling back to anyone with history in tiny worlds).
    active = _at_least(counts, 10)
    night = np.bincount(genuine.customer[(genuine.ts_ms % DAY_MS) < 6 * HOUR_MS], minlength=len(world.c_city))
    day_people = _at_least(np.where((night == 0) & ~world.c_night, counts, 0), 5)

    def n_events(name: str, rows_per_event: float) -> int:
        return max(1, round(budget * _SHARE[name] / rows_per_event))

    comp = compromised_merchant(world, genuine, round(budget * _SHARE["compromised_merchant"]), rng)
    out = [
        ("card_testing", card_testing(world, n_events("card_testing", 18.4), rng)),
        (
            "account_takeover",
            account_takeover(world, typical, active, n_events("account_takeover", 4.5), rng),
        ),
        ("compromised_merchant", comp),
        (
            "night_high_value",
            night_high_value(world, typical, day_people, n_events("night_high_value", 2), rng),
        ),
        ("impossible_travel", impossible_travel(world, genuine, n_events("impossible_travel", 1.5), rng)),
    ]
    # Events near the end may spill past the period; the data set covers exactly `days` days.
    return [(name, rows.take(rows.ts_ms < world.end_ms)) for name, rows in out]
