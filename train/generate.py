"""Synthetic payment transactions with labelled fraud scenarios that only history reveals."""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from serve_app.features.contract import DAY_MS, HOUR_MS
from serve_app.features.derive import haversine_km
from train.scenarios import (
    ATM,
    CHANNEL_NAMES,
    ONLINE,
    POS,
    SCENARIOS,
    FloatArray,
    IntArray,
    Rows,
    World,
    in_app_sessions,
    inject_fraud,
)

COLUMNS: tuple[str, ...] = (
    *("transaction_id", "timestamp", "customer_id", "merchant_id", "amount", "currency"),
    *("merchant_category", "channel", "lat", "lon", "is_fraud", "fraud_scenario"),
)

# name, lat, lon, currency, share of residents (0: only visited by travellers and fraudsters).
CITIES = (
    ("paris", 48.8566, 2.3522, "EUR", 0.22),
    ("berlin", 52.5200, 13.4050, "EUR", 0.20),
    ("madrid", 40.4168, -3.7038, "EUR", 0.16),
    ("rome", 41.9028, 12.4964, "EUR", 0.14),
    ("amsterdam", 52.3676, 4.9041, "EUR", 0.10),
    ("warsaw", 52.2297, 21.0122, "PLN", 0.10),
    ("lisbon", 38.7223, -9.1393, "EUR", 0.08),
    ("london", 51.5074, -0.1278, "GBP", 0.0),
    ("new_york", 40.7128, -74.0060, "USD", 0.0),
    ("dubai", 25.2048, 55.2708, "AED", 0.0),
    ("singapore", 1.3521, 103.8198, "SGD", 0.0),
)
# name, channel probabilities (pos, online, atm), share of merchants, median amount, log-sigma, popularity.
CATEGORIES = (
    ("grocery", (1.0, 0.0, 0.0), 0.15, 32.0, 0.7, 3.0),
    ("cafe", (1.0, 0.0, 0.0), 0.08, 5.5, 0.45, 1.6),
    ("restaurant", (1.0, 0.0, 0.0), 0.12, 38.0, 0.6, 1.6),
    ("fuel", (1.0, 0.0, 0.0), 0.05, 55.0, 0.35, 1.0),
    ("pharmacy", (1.0, 0.0, 0.0), 0.05, 18.0, 0.6, 0.6),
    ("clothing", (0.6, 0.4, 0.0), 0.08, 65.0, 0.7, 0.6),
    ("electronics", (0.4, 0.6, 0.0), 0.05, 180.0, 1.0, 0.5),
    ("jewelry", (1.0, 0.0, 0.0), 0.02, 350.0, 0.9, 0.2),
    ("hotel", (1.0, 0.0, 0.0), 0.03, 160.0, 0.5, 0.3),
    ("travel", (0.0, 1.0, 0.0), 0.03, 320.0, 0.8, 0.3),
    ("online_retail", (0.0, 1.0, 0.0), 0.10, 42.0, 0.9, 1.0),
    ("digital_goods", (0.0, 1.0, 0.0), 0.06, 4.0, 0.7, 0.7),
    ("subscription", (0.0, 1.0, 0.0), 0.04, 11.0, 0.4, 0.5),
    ("atm", (0.0, 0.0, 1.0), 0.14, 100.0, 0.6, 0.6),
)
# Hour-of-day weights (UTC) of day people: little activity at night, lunch and evening peaks.
_DAY_HOURS = np.concatenate(
    [
        [0.15, 0.08, 0.05, 0.05, 0.08, 0.2, 0.6, 1.2, 1.8, 2.0, 2.2, 2.6],  # 00-11
        [3.2, 2.8, 2.2, 2.1, 2.4, 3.0, 3.3, 2.9, 2.2, 1.5, 0.9, 0.45],  # 12-23
    ]
)
_WEEKDAY = np.array([0.95, 0.95, 1.0, 1.0, 1.15, 1.2, 0.75])  # Monday .. Sunday
_MAX_HABITS = 14


@dataclass(frozen=True)
class GeneratorConfig:
    """Size and randomness of a synthetic data set; the defaults give ~350k rows over 60 days."""

    customers: int = 4000
    merchants: int = 800
    days: int = 60
    seed: int = 7
    start: str = "2026-01-01"
    fraud_rate_target: float = 0.007

    def __post_init__(self) -> None:
        if self.customers < 50 or self.merchants < 50 or self.days < 7:
            raise ValueError("need at least 50 customers, 50 merchants and 7 days")
        if not 0.0 < self.fraud_rate_target < 0.2:
            raise ValueError("fraud_rate_target must be in (0, 0.2)")
        if not re.fullmatch(r"\d{4}-\d\d-\d\d", self.start):
            raise ValueError(f"start must be a date YYYY-MM-DD, got {self.start!r}")


@dataclass(frozen=True)
class Habits:
    """What genuine behaviour is drawn from, beyond what the fraud scenarios need (see World)."""

    rate: FloatArray  # transactions per day
    habit_p: FloatArray  # chance a payment goes to one of the customer's habitual merchants
    habits: IntArray  # (customers, _MAX_HABITS) habitual merchants, favourite first
    n_habits: IntArray
    trip_city: IntArray  # -1: no trip
    trip_ms: IntArray  # (customers, 4): leave home, arrive, leave destination, back home
    gamer_shop: IntArray  # -1: not an in-app buyer, else their app store


def _start_ms(start: str) -> int:
    return int(pd.Timestamp(start, tz="UTC").value // 1_000_000)


def _build_world(cfg: GeneratorConfig, rng: np.random.Generator) -> tuple[World, FloatArray]:
    lat = np.array([c[1] for c in CITIES])
    lon = np.array([c[2] for c in CITIES])
    residents = np.array([c[4] for c in CITIES])
    visitors = np.where(residents > 0, residents, 0.04)
    n_m, n_c = cfg.merchants, cfg.customers
    m_cat = rng.choice(len(CATEGORIES), n_m, p=_norm([c[2] for c in CATEGORIES]))
    # Small worlds may miss a category by chance; every scenario needs its kind of merchant.
    for cat in np.setdiff1d(np.arange(len(CATEGORIES)), m_cat):
        m_cat[np.flatnonzero(m_cat == np.bincount(m_cat).argmax())[0]] = cat
    chan_p = np.array([c[1] for c in CATEGORIES])[m_cat]
    m_channel = (rng.random(n_m)[:, None] > np.cumsum(chan_p, axis=1)).sum(axis=1).clip(0, 2)
    located = m_channel != ONLINE
    # Most shops serve residents; some stand in cities only travellers (and fraudsters) visit.
    m_city = np.where(located, rng.choice(len(CITIES), n_m, p=_norm(visitors)), -1)
    first = np.flatnonzero(located)[: len(CITIES)]
    m_city[first] = np.arange(len(first))  # every city has at least one located merchant
    spread = rng.normal(0.0, 0.04, (n_m, 2))
    m_lat = np.where(located, np.round(lat[m_city] + spread[:, 0], 5), np.nan)
    m_lon = np.where(located, np.round(lon[m_city] + spread[:, 1] * 1.5, 5), np.nan)
    c_scale = np.exp(rng.normal(0.0, 0.45, n_c))
    big = rng.random(n_c) < 0.04
    c_scale[big] *= rng.uniform(4.0, 12.0, int(big.sum()))
    world = World(
        start_ms=_start_ms(cfg.start),
        days=cfg.days,
        city_lat=lat,
        city_lon=lon,
        home_cities=np.flatnonzero(residents > 0),
        cat_names=tuple(c[0] for c in CATEGORIES),
        cat_median=np.array([c[3] for c in CATEGORIES]),
        cat_sigma=np.array([c[4] for c in CATEGORIES]),
        m_cat=m_cat.astype(np.int64),
        m_channel=m_channel.astype(np.int64),
        m_city=m_city.astype(np.int64),
        m_lat=m_lat,
        m_lon=m_lon,
        m_factor=np.exp(rng.normal(0.0, 0.2, n_m)),
        c_city=rng.choice(len(CITIES), n_c, p=_norm(residents)).astype(np.int64),
        c_scale=c_scale,
        c_night=rng.random(n_c) < 0.06,
        hour_p=np.stack([_norm(_DAY_HOURS), _norm(np.roll(_DAY_HOURS, 12))]),
        day_p=_norm(_WEEKDAY[(np.arange(cfg.days) + pd.Timestamp(cfg.start).day_of_week) % 7]),
    )
    popularity = np.exp(rng.normal(0.0, 1.0, n_m)) * np.array([c[5] for c in CATEGORIES])[m_cat]
    return world, popularity


def _norm(w: Sequence[float] | FloatArray) -> FloatArray:
    a = np.asarray(w, dtype=np.float64)
    return a / a.sum()


def _build_habits(world: World, popularity: FloatArray, rng: np.random.Generator) -> Habits:
    n_c = len(world.c_city)
    pref = rng.dirichlet(np.array([c[5] for c in CATEGORIES]) * 2.0, n_c)
    habits = np.zeros((n_c, _MAX_HABITS), dtype=np.int64)
    online = world.merchants(None, (ONLINE,))
    for city in world.home_cities:
        who = np.flatnonzero(world.c_city == city)
        pool = np.concatenate([world.merchants(None, (POS, ATM), int(city)), online])
        k = min(_MAX_HABITS, len(pool))
        for chunk in np.array_split(who, max(1, len(who) // 2000)):
            # Gumbel top-k: a weighted sample without replacement, for many customers at once.
            w = np.log(pref[chunk][:, world.m_cat[pool]] * popularity[pool])
            keys = w + rng.gumbel(size=w.shape)
            top = np.argsort(-keys, axis=1)[:, :k]
            habits[chunk, :k] = pool[top]
            habits[chunk, k:] = pool[top[:, :1]]
    trip_city = np.full(n_c, -1, dtype=np.int64)
    travels = np.flatnonzero(rng.random(n_c) < 0.15)
    away = world.home_cities[rng.integers(0, len(world.home_cities), len(travels))]
    far = rng.random(len(travels)) < 0.35
    away[far] = rng.integers(len(world.home_cities), len(CITIES), int(far.sum()))
    home = world.c_city[travels]
    away = np.where(away == home, (away + 1) % len(world.home_cities), away)
    trip_city[travels] = away
    # A genuine trip takes at least flight time plus airports, so its speed stays plausible.
    km = haversine_km(world.city_lat[home], world.city_lon[home], world.city_lat[away], world.city_lon[away])
    transit = ((km / 700.0 + 2.0) * HOUR_MS).astype(np.int64)
    leave = world.start_ms + rng.integers(0, world.days * DAY_MS, len(travels))
    stay = rng.uniform(2.0, 10.0, len(travels)) * DAY_MS
    trip_ms = np.zeros((n_c, 4), dtype=np.int64)
    trip_ms[travels] = np.stack([leave, leave + transit, leave + stay, leave + stay + transit], axis=1)
    gamer_shop = np.full(n_c, -1, dtype=np.int64)
    gamers = np.flatnonzero(rng.random(n_c) < 0.05)
    gamer_shop[gamers] = rng.choice(world.merchants(("digital_goods",), (ONLINE,)), len(gamers))
    return Habits(
        rate=np.clip(np.exp(rng.normal(np.log(1.2), 0.6, n_c)), 0.1, 12.0),
        habit_p=rng.beta(8.0, 2.5, n_c),
        habits=habits,
        n_habits=rng.integers(3, _MAX_HABITS + 1, n_c),
        trip_city=trip_city,
        trip_ms=trip_ms,
        gamer_shop=gamer_shop,
    )


def _genuine(world: World, habits: Habits, popularity: FloatArray, rng: np.random.Generator) -> Rows:
    cust = np.repeat(np.arange(len(world.c_city)), rng.poisson(habits.rate * world.days))
    ts = world.times(cust, rng)
    trip = habits.trip_ms[cust]
    has_trip = habits.trip_city[cust] >= 0
    # In transit (an hour before departure until arrival) nobody pays: that keeps genuine speeds sane.
    transit = has_trip & (
        ((ts >= trip[:, 0] - HOUR_MS) & (ts < trip[:, 1]))
        | ((ts >= trip[:, 2] - HOUR_MS) & (ts < trip[:, 3]))
    )
    cust, ts, trip, has_trip = cust[~transit], ts[~transit], trip[~transit], has_trip[~transit]
    away = has_trip & (ts >= trip[:, 1]) & (ts < trip[:, 2])
    city = np.where(away, habits.trip_city[cust], world.c_city[cust])
    n = len(cust)
    habitual = (rng.random(n) < habits.habit_p[cust]) & ~away
    slot = (rng.random(n) ** 1.8 * habits.n_habits[cust]).astype(np.int64)
    merch = habits.habits[cust, slot]
    online = world.merchants(None, (ONLINE,))
    weight = popularity * np.where(world.m_channel == ONLINE, 1.0, 3.0)  # away from home, shops over web
    for c in np.unique(city[~habitual]):
        rows = np.flatnonzero(~habitual & (city == c))
        pool = np.concatenate([world.merchants(None, (POS, ATM), int(c)), online])
        merch[rows] = rng.choice(pool, len(rows), p=_norm(weight[pool]))
    base = Rows(cust, merch, ts, world.amounts(merch, cust, rng))
    return Rows.concat([base, in_app_sessions(world, habits.gamer_shop, rng)])


def _frame(world: World, parts: list[tuple[str, Rows]], rng: np.random.Generator) -> pd.DataFrame:
    rows = Rows.concat([p for _, p in parts])
    code = np.concatenate([np.full(len(p), i, dtype=np.int64) for i, (_, p) in enumerate(parts)])
    label = np.array([name for name, _ in parts], dtype=object)  # "" for the genuine part
    # Random tie-break: simultaneous rows must not sort by how they were generated (genuine first).
    order = np.lexsort((rng.random(len(rows)), rows.ts_ms))
    rows, code = rows.take(order), code[order]
    m = rows.merchant
    n_c, n_m = len(world.c_city), len(world.m_cat)
    cust_ids = np.array([f"c_{i:0{max(5, len(str(n_c - 1)))}d}" for i in range(n_c)], dtype=object)
    merch_ids = np.array([f"m_{i:0{max(4, len(str(n_m - 1)))}d}" for i in range(n_m)], dtype=object)
    currency = np.array([c[3] for c in CITIES] + ["EUR"], dtype=object)  # index -1: online, EUR
    scenario = label[code]
    return pd.DataFrame(
        {
            "transaction_id": np.array([f"tx_{i:09d}" for i in range(len(rows))], dtype=object),
            "timestamp": pd.Series(rows.ts_ms.astype("datetime64[ms]")).dt.tz_localize("UTC"),
            "customer_id": cust_ids[rows.customer],
            "merchant_id": merch_ids[m],
            "amount": rows.amount,
            "currency": currency[world.m_city[m]],
            "merchant_category": np.array(world.cat_names, dtype=object)[world.m_cat[m]],
            "channel": np.array(CHANNEL_NAMES, dtype=object)[world.m_channel[m]],
            "lat": world.m_lat[m],
            "lon": world.m_lon[m],
            "is_fraud": (code > 0).astype(np.int64),
            "fraud_scenario": scenario,
        },
        columns=list(COLUMNS),
    )


def generate(config: GeneratorConfig, progress: bool = False) -> pd.DataFrame:
    """Genuine behaviour plus the five fraud scenarios, sorted by timestamp then transaction_id."""
    rng = np.random.default_rng(config.seed)
    with tqdm(total=5, desc="generate", disable=not progress, unit="step") as bar:

        def step(name: str) -> None:
            bar.set_postfix_str(name)
            bar.update()

        world, popularity = _build_world(config, rng)
        step("customer habits")
        habits = _build_habits(world, popularity, rng)
        step("genuine transactions")
        genuine = _genuine(world, habits, popularity, rng)
        step("fraud scenarios")
        fraud = inject_fraud(world, genuine, config.fraud_rate_target, rng)
        step("frame")
        df = _frame(world, [("", genuine), *fraud], rng)
        step("done")
    return df


def write_transactions(df: pd.DataFrame, path: Path) -> None:
    """Write as Parquet (`.parquet`) or CSV (`.csv`, `.csv.gz`) with RFC 3339 UTC timestamps."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name.lower()
    if name.endswith(".parquet"):
        df.to_parquet(path, index=False)
    elif name.endswith((".csv", ".csv.gz")):
        naive = df["timestamp"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[ms]")
        out = df.assign(timestamp=np.datetime_as_string(naive, unit="ms", timezone="UTC"))
        out.to_csv(path, index=False)
    else:
        raise ValueError(f"unsupported file type {path.name!r}: use .csv, .csv.gz or .parquet")


def summary(df: pd.DataFrame) -> str:
    """Rows, fraud rate overall and per scenario, date range."""
    n = len(df)
    people, shops = df["customer_id"].nunique(), df["merchant_id"].nunique()
    lines = [f"rows: {n:,}  customers: {people:,}  merchants: {shops:,}"]
    lines.append(
        f"dates: {df['timestamp'].min():%Y-%m-%d %H:%M:%S} .. {df['timestamp'].max():%Y-%m-%d %H:%M:%S} UTC"
    )
    lines.append(f"fraud: {int(df['is_fraud'].sum()):,} rows ({df['is_fraud'].mean():.3%})")
    counts = df.loc[df["is_fraud"] == 1, "fraud_scenario"].value_counts()
    lines.extend(f"  {s:<22}{int(counts.get(s, 0)):>8,} rows ({counts.get(s, 0) / n:.3%})" for s in SCENARIOS)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    defaults = GeneratorConfig()
    p = argparse.ArgumentParser(
        prog="python -m train.generate",
        description="Generate synthetic card transactions with labelled fraud scenarios.",
    )
    p.add_argument("--customers", type=int, default=defaults.customers, help="number of customers")
    p.add_argument("--merchants", type=int, default=defaults.merchants, help="number of merchants/terminals")
    p.add_argument("--days", type=int, default=defaults.days, help="length of the period in days")
    p.add_argument("--seed", type=int, default=defaults.seed, help="random seed (same seed, same file)")
    p.add_argument("--start", default=defaults.start, help="first day, YYYY-MM-DD (UTC)")
    p.add_argument("--fraud-rate", type=float, default=defaults.fraud_rate_target, help="target fraud share")
    p.add_argument("--out", type=Path, required=True, help="output file: .csv, .csv.gz or .parquet")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        cfg = GeneratorConfig(
            args.customers, args.merchants, args.days, args.seed, args.start, args.fraud_rate
        )
    except ValueError as exc:
        p.error(str(exc))
    t0 = time.perf_counter()
    df = generate(cfg, progress=not args.quiet)
    t1 = time.perf_counter()
    write_transactions(df, args.out)
    print(summary(df))
    print(f"generated in {t1 - t0:.1f} s, wrote {args.out} in {time.perf_counter() - t1:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
