"""Unit tests of the synthetic transaction generator: schema, realism properties and reproducibility."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from serve_app.features.contract import HOUR_MS
from serve_app.features.derive import haversine_km
from serve_app.features.offline import timestamps_ms
from serve_app.schemas import CHANNELS, ID_PATTERN, MAX_AMOUNT
from train.generate import COLUMNS, GeneratorConfig, generate, main, write_transactions
from train.scenarios import SCENARIOS

SMALL = GeneratorConfig(customers=400, merchants=120, days=21, seed=3)
MEDIUM = GeneratorConfig(customers=1500, merchants=300, days=30, seed=11)


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    return generate(SMALL)


@pytest.fixture(scope="module")
def medium() -> pd.DataFrame:
    return generate(MEDIUM)


def _within_customer(df: pd.DataFrame) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Customer codes and epoch ms, as int64 arrays."""
    return pd.factorize(df["customer_id"])[0].astype(np.int64), timestamps_ms(df["timestamp"])


def test_columns_and_dtypes(small: pd.DataFrame) -> None:
    assert tuple(small.columns) == COLUMNS
    assert str(small["timestamp"].dtype) == "datetime64[ms, UTC]"
    for col in ("transaction_id", "customer_id", "merchant_id", "currency", "merchant_category", "channel"):
        assert pd.api.types.is_string_dtype(small[col]), col
    assert pd.api.types.is_string_dtype(small["fraud_scenario"])
    for col in ("amount", "lat", "lon"):
        assert small[col].dtype == np.float64, col
    assert small["is_fraud"].dtype == np.int64
    assert set(small["is_fraud"].unique()) == {0, 1}
    assert set(small["channel"].unique()) == set(CHANNELS)
    assert small["merchant_category"].str.fullmatch(r"[a-z_]{1,32}").all()
    assert small["currency"].str.fullmatch(r"[A-Z]{3}").all()
    online = (small["channel"] == "online").to_numpy()
    assert small.loc[online, ["lat", "lon"]].isna().all().all()
    assert small.loc[~online, ["lat", "lon"]].notna().all().all()
    assert small["lat"].between(-90, 90).sum() == (~online).sum()


def test_ids_match_the_pattern_are_unique_and_rows_are_sorted(small: pd.DataFrame) -> None:
    pattern = re.compile(ID_PATTERN)
    for col in ("transaction_id", "customer_id", "merchant_id"):
        assert all(pattern.fullmatch(v) for v in small[col].unique()), col
    assert small["transaction_id"].is_unique
    assert small["transaction_id"].is_monotonic_increasing  # sortable: zero-padded, in row order
    ordered = small.sort_values(["timestamp", "transaction_id"], kind="stable")
    assert (ordered.index == small.index).all()


def test_all_scenarios_present_and_fraud_rate_in_range(small: pd.DataFrame) -> None:
    fraud = small["is_fraud"] == 1
    assert set(small.loc[fraud, "fraud_scenario"]) == set(SCENARIOS)
    assert (small.loc[~fraud, "fraud_scenario"] == "").all()
    assert 0.003 <= fraud.mean() <= 0.015
    start = pd.Timestamp(SMALL.start, tz="UTC")
    assert small["timestamp"].min() >= start
    assert small["timestamp"].max() < start + pd.Timedelta(days=SMALL.days)


def test_same_seed_same_data_other_seed_other_data(small: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(generate(SMALL), small)
    other = generate(GeneratorConfig(customers=400, merchants=120, days=21, seed=4))
    assert len(other) != len(small) or not other["amount"].equals(small["amount"])


def test_amounts_are_positive_finite_and_in_cents(small: pd.DataFrame) -> None:
    amount = small["amount"].to_numpy()
    assert np.isfinite(amount).all()
    assert (amount > 0).all()
    assert (amount <= MAX_AMOUNT).all()
    np.testing.assert_allclose(amount * 100, np.round(amount * 100), atol=1e-6)


def test_rejects_bad_configs() -> None:
    with pytest.raises(ValueError, match="at least"):
        GeneratorConfig(customers=5)
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        GeneratorConfig(start="01/02/2026")


def test_cli_writes_the_file_and_prints_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tx.parquet"
    argv = [
        "--customers",
        "100",
        "--merchants",
        "60",
        "--days",
        "10",
        "--seed",
        "1",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert len(pd.read_parquet(out)) > 1000
    printed = capsys.readouterr().out
    assert "rows:" in printed
    assert all(name in printed for name in SCENARIOS)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_file_round_trip(small: pd.DataFrame, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"tx{suffix}"
    write_transactions(small, path)
    if suffix == ".csv":
        first = path.read_text().splitlines()[1]
        assert re.search(r",\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z,", first)
        # "" would read as NaN: only the coordinates may be missing.
        back = pd.read_csv(path, keep_default_na=False, na_values={"lat": [""], "lon": [""]})
        back["timestamp"] = pd.to_datetime(back["timestamp"], utc=True, format="ISO8601").astype(
            "datetime64[ms, UTC]"
        )
    else:
        back = pd.read_parquet(path)
    pd.testing.assert_frame_equal(back, small, check_dtype=False)
    assert str(back["timestamp"].dtype) == "datetime64[ms, UTC]"


def test_unknown_suffix_is_refused(small: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported"):
        write_transactions(small, tmp_path / "tx.json")


def test_no_single_raw_field_reaches_pr_auc_half(medium: pd.DataFrame) -> None:
    y = medium["is_fraud"].to_numpy()
    ts = medium["timestamp"]
    numeric = {
        "amount": medium["amount"].to_numpy(),
        "hour": (ts.dt.hour + ts.dt.minute / 60.0).to_numpy(dtype=np.float64),
        "lat": medium["lat"].to_numpy(),
        "lon": medium["lon"].to_numpy(),
        "channel_code": pd.factorize(medium["channel"], sort=True)[0].astype(np.float64),
        "category_code": pd.factorize(medium["merchant_category"], sort=True)[0].astype(np.float64),
    }
    scores: dict[str, npt.NDArray[np.float64]] = {}
    for name, values in numeric.items():
        # Missing coordinates (online) may sit at either end of the ranking.
        for fill in (np.nanmin(values) - 1.0, np.nanmax(values) + 1.0):
            filled = np.where(np.isnan(values), fill, values)
            scores[f"{name} (nan={fill:.0f})"] = filled
            scores[f"-{name} (nan={fill:.0f})"] = -filled
    for col in ("channel", "merchant_category"):
        scores[f"{col} fraud rate"] = medium.groupby(col)["is_fraud"].transform("mean").to_numpy()
    pr_auc = {name: average_precision_score(y, s) for name, s in scores.items()}
    best = max(pr_auc, key=lambda k: pr_auc[k])
    assert pr_auc[best] < 0.5, f"{best} alone separates fraud: PR-AUC {pr_auc[best]:.3f}"


def test_card_testing_bursts_show_in_the_last_hour_of_history(medium: pd.DataFrame) -> None:
    cust, t = _within_customer(medium)
    order = np.lexsort((t, cust))
    key = cust[order] * (1 << 42) + t[order]
    # Transactions of the same customer in [t - 1 h, t] (this one included), per row.
    in_hour = np.empty(len(t), dtype=np.int64)
    in_hour[order] = np.arange(len(key)) - np.searchsorted(key, key - HOUR_MS, "left") + 1
    testing = (medium["fraud_scenario"] == "card_testing").to_numpy()
    peak = pd.Series(in_hour[testing]).groupby(cust[testing]).max()
    assert len(peak) >= 3
    assert (peak >= 5).all()
    genuine = medium["is_fraud"].to_numpy() == 0
    assert np.quantile(in_hour[genuine], 0.99) < 5  # bursts are rare in genuine behaviour


def test_compromised_merchants_are_few_and_compromised_for_days(medium: pd.DataFrame) -> None:
    comp = medium[medium["fraud_scenario"] == "compromised_merchant"]
    spans = comp.groupby("merchant_id")["timestamp"].agg(lambda s: (s.max() - s.min()).days)
    assert 1 <= len(spans) <= 0.05 * MEDIUM.merchants
    assert (spans <= 12).all()
    per_merchant = comp.groupby("merchant_id").size()
    assert per_merchant.min() >= 3


def test_genuine_travel_is_plausible_and_impossible_travel_is_not(medium: pd.DataFrame) -> None:
    def speeds(frame: pd.DataFrame) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        located = frame[frame["lat"].notna()]
        cust, t = _within_customer(located)
        o = np.lexsort((t, cust))
        same = cust[o][1:] == cust[o][:-1]
        lat, lon = located["lat"].to_numpy()[o], located["lon"].to_numpy()[o]
        km = haversine_km(lat[:-1], lon[:-1], lat[1:], lon[1:])[same]
        hours = np.maximum(np.diff(t[o])[same] / HOUR_MS, 1 / 60)
        return km, km / hours

    km, kmh = speeds(medium[medium["is_fraud"] == 0])
    assert (km > 1000).sum() > 10  # genuine people do travel far ...
    assert kmh[km > 200].max() < 900  # ... at the speed of a plane at most
    km, kmh = speeds(medium[(medium["is_fraud"] == 0) | (medium["fraud_scenario"] == "impossible_travel")])
    assert (kmh[km > 1000] > 900).sum() >= 3
