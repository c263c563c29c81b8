"""SLO verdicts on Locust stats rows, and the scenario/SLO config with its per-scenario overrides."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from loadtest.slo import (
    AGGREGATED,
    SCENARIOS,
    ConfigError,
    RunSummary,
    Slo,
    judge,
    load_config,
    read_stats_csv,
    summary_from_rows,
)

# The header Locust 2.x writes to <prefix>_stats.csv. Not taken from locust itself: importing locust
# monkey-patches the whole interpreter with gevent, which would leak into every later test. The
# integration smoke test reads a CSV written by the real Locust.
PERCENTILE_COLUMNS = ["50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%"]
HEADER = [
    "Type",
    "Name",
    "Request Count",
    "Failure Count",
    "Median Response Time",
    "Average Response Time",
    "Min Response Time",
    "Max Response Time",
    "Average Content Size",
    "Requests/s",
    "Failures/s",
    *PERCENTILE_COLUMNS,
]


def stats_row(
    name: str, requests: int, failures: int, p50: str, p95: str, p99: str, rps: float
) -> dict[str, str]:
    row = dict.fromkeys(HEADER, "0")
    row.update(
        {
            "Type": "POST" if name != AGGREGATED else "",
            "Name": name,
            "Request Count": str(requests),
            "Failure Count": str(failures),
            "Requests/s": str(rps),
            "50%": p50,
            "95%": p95,
            "99%": p99,
        }
    )
    return row


def summary(requests: int = 10_000, failures: int = 0, p99: float = 40.0) -> RunSummary:
    return RunSummary(requests=requests, failures=failures, p50_ms=8, p95_ms=20, p99_ms=p99, rps=150.0)


def test_the_total_row_is_judged_not_an_endpoint_row() -> None:
    rows = [
        stats_row("/v1/score", 9000, 0, "8", "20", "45", 150.0),
        stats_row("/v1/score [burst]", 1000, 30, "9", "60", "400", 16.0),
        stats_row(AGGREGATED, 10_000, 30, "8", "25", "120", 166.0),
    ]
    total = summary_from_rows(rows)
    assert (total.requests, total.failures, total.p99_ms, total.rps) == (10_000, 30, 120.0, 166.0)
    assert total.error_rate == pytest.approx(0.003)
    assert summary_from_rows(rows, "/v1/score").p99_ms == 45.0


def test_a_run_within_the_slo_passes() -> None:
    verdict = judge(summary(failures=10, p99=99.0), Slo())
    assert verdict.passed
    assert verdict.violations == []


@pytest.mark.parametrize(
    ("run", "problem"),
    [
        (summary(p99=100.0), "p99 100 ms >= 100 ms"),  # the bound is strict: p99 < 100 ms
        (summary(failures=11), "error rate 0.110% > 0.100%"),
        (summary(requests=0, p99=math.nan), "requests 0 < minimum 1"),
    ],
)
def test_each_missed_objective_is_named(run: RunSummary, problem: str) -> None:
    verdict = judge(run, Slo())
    assert not verdict.passed
    assert verdict.violations == [problem]


def test_all_missed_objectives_are_listed_together() -> None:
    verdict = judge(summary(failures=5000, p99=900.0), Slo(p99_ms=250, max_error_rate=0.01))
    assert verdict.violations == ["p99 900 ms >= 250 ms", "error rate 50.000% > 1.000%"]


def test_memory_growth_is_judged_only_where_the_slo_asks_for_it() -> None:
    soak = Slo(max_memory_growth_pct=25)
    assert judge(summary(), soak, memory_growth_pct=24.0).passed
    assert judge(summary(), soak, memory_growth_pct=31.0).violations == ["memory growth 31.0 % > 25 %"]
    assert "not measured" in judge(summary(), soak, memory_growth_pct=None).violations[0]
    assert judge(summary(), Slo(), memory_growth_pct=500.0).passed


def test_reads_locusts_csv_including_na_percentiles(tmp_path: Path) -> None:
    path = tmp_path / "locust_stats.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=HEADER)
        writer.writeheader()
        writer.writerow(stats_row("/v1/score", 0, 0, "N/A", "N/A", "N/A", 0.0))
        writer.writerow(stats_row(AGGREGATED, 0, 0, "N/A", "N/A", "N/A", 0.0))
    empty = read_stats_csv(path)
    assert empty.requests == 0
    assert math.isnan(empty.p99_ms)
    assert not judge(empty, Slo()).passed


def test_a_malformed_stats_file_names_row_and_column() -> None:
    row = stats_row(AGGREGATED, 10, 0, "8", "20", "fast", 1.0)
    with pytest.raises(ConfigError, match=r"'Aggregated', column '99%': 'fast'"):
        summary_from_rows([row])
    with pytest.raises(ConfigError, match="no stats row named 'Aggregated'"):
        summary_from_rows([stats_row("/v1/score", 10, 0, "8", "20", "30", 1.0)])


def test_the_shipped_config_defines_every_scenario_with_its_overrides() -> None:
    config = load_config()
    assert set(config.scenarios) == set(SCENARIOS)
    assert config.slo_for("steady") == Slo(p99_ms=100, max_error_rate=0.001)
    spike = config.slo_for("spike")
    assert (spike.p99_ms, spike.max_error_rate) == (250, 0.001)  # override on top of the default
    assert config.slo_for("soak").max_memory_growth_pct is not None
    assert config.scenario("batch").batch_size == 256


def test_config_errors_name_the_offending_field(tmp_path: Path) -> None:
    path = tmp_path / "loadtest.yaml"
    path.write_text("scenarios:\n  steady:\n    users: many\n")
    with pytest.raises(ConfigError, match=r"scenarios\.steady\.users"):
        load_config(path)
    path.write_text("scenarios:\n  stampede:\n    users: 3\n")
    with pytest.raises(ConfigError, match=r"scenarios\.stampede is not a scenario"):
        load_config(path)
    path.write_text("scenarios:\n  spike:\n    slo: {p99_ms: -5}\n")
    with pytest.raises(ConfigError, match=r"scenarios\.spike\.slo: p99_ms"):
        load_config(path)
    with pytest.raises(ConfigError, match="unknown scenario 'stampede'"):
        load_config().scenario("stampede")
