"""Scenario settings and SLOs from configs/loadtest.yaml, and the pass/fail verdict on Locust's stats CSV."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "loadtest.yaml"
AGGREGATED = "Aggregated"  # the name of Locust's total row in <prefix>_stats.csv
SCENARIOS = ("steady", "ramp", "spike", "fraud-burst", "batch", "soak")


class ConfigError(ValueError):
    """configs/loadtest.yaml (or a stats file) cannot be used; the message names the field."""


class Slo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    p99_ms: float = Field(100.0, gt=0)
    max_error_rate: float = Field(0.001, ge=0, le=1)
    min_requests: int = Field(1, ge=0)
    max_memory_growth_pct: float | None = Field(None, gt=0)


class ScenarioConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = ""
    users: int = Field(16, ge=1, le=10_000)
    duration_s: float = Field(60.0, gt=0, le=7 * 24 * 3600)
    user_rps: float = Field(10.0, gt=0)
    batch_size: int = Field(256, ge=1, le=1000)
    slo: dict[str, Any] = Field(default_factory=dict)  # overrides, merged onto default_slo


class LoadtestConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_slo: Slo = Field(default_factory=Slo)
    scenarios: dict[str, ScenarioConfig] = Field(default_factory=dict)

    def scenario(self, name: str) -> ScenarioConfig:
        if name not in SCENARIOS:
            raise ConfigError(f"unknown scenario {name!r}; choose one of {', '.join(SCENARIOS)}")
        return self.scenarios.get(name, ScenarioConfig())

    def slo_for(self, name: str) -> Slo:
        """The default SLO with the scenario's overrides applied (validated again as a whole)."""
        merged = {**self.default_slo.model_dump(), **self.scenario(name).slo}
        try:
            return Slo.model_validate(merged)
        except ValidationError as exc:
            raise ConfigError(f"scenarios.{name}.slo: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(root)"
    return f"{where}: {err['msg']}"


def load_config(path: Path = DEFAULT_CONFIG) -> LoadtestConfig:
    """Read and validate the YAML; a bad file fails with the path of the offending field."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    try:
        config = LoadtestConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_first_error(exc)}") from None
    unknown = sorted(set(config.scenarios) - set(SCENARIOS))
    if unknown:
        raise ConfigError(f"{path}: scenarios.{unknown[0]} is not a scenario ({', '.join(SCENARIOS)})")
    for name in config.scenarios:
        config.slo_for(name)  # fail now, not after a long run
    return config


class RunSummary(BaseModel):
    """The numbers a verdict is made of (times in ms, rates per second)."""

    requests: int
    failures: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    rps: float

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


def _number(row: Mapping[str, str], column: str, row_name: str) -> float:
    text = row.get(column)
    if text is None:
        raise ConfigError(f"stats row {row_name!r} has no column {column!r}")
    if text.strip() == "N/A":  # Locust writes N/A for percentiles of a row without requests
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"stats row {row_name!r}, column {column!r}: {text!r} is not a number") from None


def summary_from_rows(rows: Iterable[Mapping[str, str]], name: str = AGGREGATED) -> RunSummary:
    """The summary of the row called `name` (Locust's total row by default)."""
    for row in rows:
        if row.get("Name") == name:
            return RunSummary(
                requests=int(_number(row, "Request Count", name)),
                failures=int(_number(row, "Failure Count", name)),
                p50_ms=_number(row, "50%", name),
                p95_ms=_number(row, "95%", name),
                p99_ms=_number(row, "99%", name),
                rps=_number(row, "Requests/s", name),
            )
    raise ConfigError(f"no stats row named {name!r}")


def read_stats_csv(path: Path, name: str = AGGREGATED) -> RunSummary:
    with Path(path).open(newline="") as fh:
        return summary_from_rows(csv.DictReader(fh), name)


class Verdict(BaseModel):
    passed: bool
    violations: list[str]


def judge(summary: RunSummary, slo: Slo, memory_growth_pct: float | None = None) -> Verdict:
    """Every SLO that was missed, in words; passed only when the list is empty."""
    problems: list[str] = []
    if summary.requests < slo.min_requests:
        problems.append(f"requests {summary.requests} < minimum {slo.min_requests}")
    if summary.requests and not summary.p99_ms < slo.p99_ms:  # NaN (no data) fails too
        problems.append(f"p99 {summary.p99_ms:g} ms >= {slo.p99_ms:g} ms")
    if summary.error_rate > slo.max_error_rate:
        problems.append(f"error rate {summary.error_rate:.3%} > {slo.max_error_rate:.3%}")
    if slo.max_memory_growth_pct is not None:
        if memory_growth_pct is None:
            problems.append("memory growth was not measured (server processes not found)")
        elif memory_growth_pct > slo.max_memory_growth_pct:
            problems.append(f"memory growth {memory_growth_pct:.1f} % > {slo.max_memory_growth_pct:g} %")
    return Verdict(passed=not problems, violations=problems)
