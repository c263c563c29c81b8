"""Unit tests of serve_app.metrics without Ray: input checks, batch aggregation, names, dashboard coverage."""

from __future__ import annotations

import itertools
import json
import logging
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from serve_app import metrics

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "configs" / "grafana" / "dashboards" / "fraud.json"
PROMETHEUS_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def test_calls_without_ray_are_no_ops_and_do_not_start_ray() -> None:
    # A fresh interpreter: the test session may have a Ray running (integration tests share it).
    script = """
import sys
from serve_app import metrics
assert "ray" not in sys.modules, "importing serve_app.metrics imported ray"
metrics.record_scores(["approve", "decline"], [0.1, 0.9], [[], ["velocity"]], [False, True], "7")
metrics.observe_batch_size("ingress", 8)
metrics.observe_store_latency(0.002, ok=False)
metrics.record_labels(3, is_fraud=1)
metrics.set_model_version("7")
import ray
print(metrics.metrics_active(), ray.is_initialized())
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]


def test_summary_counts_each_tag_value_once_per_batch() -> None:
    summary = metrics.summarize_scores(
        decisions=["approve", "decline", "approve", "review"],
        probabilities=np.array([0.01, 0.97, 0.2, 0.55], dtype=np.float32),
        rule_hits=[[], ["velocity", "amount_spike"], ["velocity"], []],
        degraded=[False, True, False, True],
    )
    assert summary.decisions == {"approve": 2, "decline": 1, "review": 1}
    assert summary.rule_hits == {"velocity": 2, "amount_spike": 1}
    assert summary.degraded == 2
    assert summary.probabilities == pytest.approx((0.01, 0.97, 0.2, 0.55), abs=1e-6)
    assert all(type(p) is float for p in summary.probabilities)  # Ray rejects numpy scalars


def test_a_rule_listed_twice_for_one_transaction_counts_once() -> None:
    summary = metrics.summarize_scores(["decline"], [0.9], [["velocity", "velocity"]], [False])
    assert summary.rule_hits == {"velocity": 1}


def test_empty_batch_is_an_empty_summary() -> None:
    summary = metrics.summarize_scores([], [], [], [])
    assert summary == metrics.ScoreSummary()


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("probabilities", {"probabilities": [0.1]}),
        ("rule_hits", {"rule_hits": [[]]}),
        ("degraded", {"degraded": [False, False, False]}),
    ],
)
def test_length_mismatch_names_the_field(field: str, kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {
        "decisions": ["approve", "review"],
        "probabilities": [0.1, 0.5],
        "rule_hits": [[], []],
        "degraded": [False, False],
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=field):
        metrics.summarize_scores(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [float("nan"), -0.01, 1.5, float("inf")])
def test_probability_outside_unit_interval_is_rejected_with_its_index(bad: float) -> None:
    with pytest.raises(ValueError, match=r"probabilities\[1\]"):
        metrics.summarize_scores(["approve", "decline"], [0.2, bad], [[], []], [False, False])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: metrics.record_scores(["approve"], [0.1, 0.2], [[]], [False], "1"), "probabilities has 2"),
        (
            lambda: metrics.record_scores(["approve"], [np.nan], [[]], [False], "1"),
            r"probabilities\[0\]",
        ),
        (lambda: metrics.record_labels(2, is_fraud=3), "is_fraud"),
        (lambda: metrics.record_labels(-1), "is_fraud"),
        (lambda: metrics.observe_batch_size("Ingress", -1), "batch size"),
        (lambda: metrics.observe_store_latency(float("nan"), ok=True), "latency"),
        (lambda: metrics.observe_store_latency(-0.1, ok=True), "latency"),
    ],
)
def test_bad_calls_are_logged_not_raised(
    call: Callable[[], None], message: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Metrics must never turn a scored request into a 500; the mistake is logged and the point dropped.
    with caplog.at_level(logging.WARNING, logger="serve_app.metrics"):
        call()
    assert len(caplog.records) == 1
    assert re.search(message, caplog.records[0].getMessage())
    assert "not recorded" in caplog.records[0].getMessage()


def test_good_calls_log_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="serve_app.metrics"):
        metrics.record_scores(["approve"], np.array([0.5]), [["velocity"]], [True], "1")
        metrics.record_labels(0)
        metrics.observe_batch_size("Ingress", 0)
        metrics.observe_store_latency(0.0, ok=True)
    assert caplog.records == []


def test_metric_names_are_valid_unique_and_prefixed() -> None:
    assert len(set(metrics.METRIC_NAMES)) == len(metrics.METRIC_NAMES)
    for name in metrics.METRIC_NAMES:
        assert PROMETHEUS_NAME.match(name), name
        assert name.startswith("fraud_"), name
    counters = {metrics.DECISIONS, metrics.RULE_HITS, metrics.DEGRADED, metrics.STORE_ERRORS, metrics.LABELS}
    assert all(name.endswith("_total") for name in counters)


@pytest.mark.parametrize(
    "buckets", [metrics.PROBABILITY_BUCKETS, metrics.BATCH_SIZE_BUCKETS, metrics.STORE_LATENCY_BUCKETS]
)
def test_histogram_boundaries_are_positive_and_increasing(buckets: list[float]) -> None:
    assert buckets[0] > 0
    assert all(a < b for a, b in itertools.pairwise(buckets))


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_dashboard_charts_every_product_metric() -> None:
    queries = " ".join(_dashboard_exprs())
    for name in metrics.METRIC_NAMES:
        # Ray exports application metrics with a "ray_" prefix.
        assert f"ray_{name}" in queries, f"{name} is not on the Grafana dashboard"


def test_dashboard_queries_only_metrics_that_exist() -> None:
    queried = set(re.findall(r"ray_fraud_[a-z_]+", " ".join(_dashboard_exprs())))
    suffixes = ("_bucket", "_count", "_sum")
    known = {f"ray_{name}" for name in metrics.METRIC_NAMES}
    known |= {f"ray_{name}{suffix}" for name in metrics.METRIC_NAMES for suffix in suffixes}
    assert queried <= known, queried - known
