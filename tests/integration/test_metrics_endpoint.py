"""The product's metrics, recorded inside a Ray actor, appear on the session Ray's Prometheus endpoint."""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections.abc import Callable

import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

from serve_app import metrics

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
# Ray's own labels on every sample; dropped so a series is keyed by the product's tags only.
RAY_LABELS = {"Component", "NodeAddress", "SessionName", "Version", "WorkerId"}


@ray.remote(num_cpus=0)
class Recorder:
    """Stands in for a replica: the metrics module is used inside a Ray worker process, as in serving."""

    def record(self, rule: str, deployment: str, version: str) -> bool:
        metrics.record_scores(
            decisions=["approve", "decline", "review"],
            probabilities=[0.03, 0.97, 0.6],
            rule_hits=[[], [rule, "velocity"], [rule]],
            degraded=[False, True, False],
            model_version=version,
        )
        metrics.observe_batch_size(deployment, 3)
        metrics.observe_store_latency(0.004, ok=True)
        metrics.observe_store_latency(0.2, ok=False)
        metrics.record_labels(5, is_fraud=2)
        return metrics.metrics_active()

    def switch_version(self, version: str) -> None:
        metrics.set_model_version(version)


def _scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith("ray_fraud_"):
                continue
            labels = frozenset(
                (k, v) for k, v in sample.labels.items() if k not in RAY_LABELS and not k.startswith("otel_")
            )
            # Several worker processes may export the same series; Prometheus would sum them too.
            samples[(sample.name, labels)] = samples.get((sample.name, labels), 0.0) + sample.value
    return samples


def _wait_for(port: int, ready: Callable[[Samples], bool], timeout_s: float = 45.0) -> Samples:
    """Ray exports on an interval (seconds), so poll until the expected series show up."""
    deadline = time.monotonic() + timeout_s
    samples: Samples = {}
    while time.monotonic() < deadline:
        try:
            samples = _scrape(port)
        except OSError:
            samples = {}
        if ready(samples):
            return samples
        time.sleep(1.0)
    names = sorted({name for name, _ in samples})
    pytest.fail(f"expected series did not appear within {timeout_s} s; ray_fraud_* seen: {names}")


def test_product_metrics_appear_on_rays_prometheus_endpoint(ray_session: None, ray_metrics_port: int) -> None:
    # Unique tag values isolate this test's series from whatever else the session's Ray recorded.
    tag = uuid.uuid4().hex[:8]
    rule, deployment, version, next_version = f"rule_{tag}", f"dep_{tag}", f"v_{tag}", f"w_{tag}"
    recorder = Recorder.remote()  # type: ignore[attr-defined]
    assert ray.get(recorder.record.remote(rule, deployment, version)) is True

    def rule_key(value: str) -> tuple[str, frozenset[tuple[str, str]]]:
        return ("ray_fraud_rule_hits_total", frozenset({("rule", value)}))

    samples = _wait_for(ray_metrics_port, lambda s: rule_key(rule) in s)

    assert samples[rule_key(rule)] == 2
    for decision in ("approve", "decline", "review"):
        assert samples[("ray_fraud_decisions_total", frozenset({("decision", decision)}))] >= 1
    assert samples[("ray_fraud_degraded_total", frozenset())] >= 1
    assert samples[("ray_fraud_model_info", frozenset({("version", version)}))] == 1
    assert samples[("ray_fraud_batch_size_count", frozenset({("deployment", deployment)}))] == 1
    bucket = "ray_fraud_batch_size_bucket"
    assert samples[(bucket, frozenset({("deployment", deployment), ("le", "2.0")}))] == 0
    assert samples[(bucket, frozenset({("deployment", deployment), ("le", "4.0")}))] == 1
    assert samples[("ray_fraud_probability_count", frozenset())] >= 3
    assert samples[("ray_fraud_feature_store_latency_seconds_count", frozenset())] >= 2
    assert samples[("ray_fraud_feature_store_errors_total", frozenset())] >= 1
    assert samples[("ray_fraud_labels_total", frozenset({("label", "fraud")}))] >= 2
    assert samples[("ray_fraud_labels_total", frozenset({("label", "genuine")}))] >= 3

    # A reload to a new version zeroes the old series, so `ray_fraud_model_info == 1` finds what is served.
    ray.get(recorder.switch_version.remote(next_version))
    old_key = ("ray_fraud_model_info", frozenset({("version", version)}))
    new_key = ("ray_fraud_model_info", frozenset({("version", next_version)}))
    _wait_for(ray_metrics_port, lambda s: s.get(new_key) == 1 and s.get(old_key) == 0)

    # Ray forgets a gauge series not set for two export intervals (20 s by default); an idle replica must
    # still say which version it serves.
    time.sleep(25.0)
    assert _scrape(ray_metrics_port).get(new_key) == 1
    ray.kill(recorder)
