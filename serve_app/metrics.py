"""The product's Prometheus metrics via ray.util.metrics: created lazily, a no-op while Ray is not running."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter as Tally
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

# Names as declared to Ray. Ray's exporter prefixes them with "ray_" and counters get "_total" only once,
# so the series on /metrics are e.g. `ray_fraud_decisions_total` and `ray_fraud_probability_bucket`.
DECISIONS = "fraud_decisions_total"
RULE_HITS = "fraud_rule_hits_total"
PROBABILITY = "fraud_probability"
DEGRADED = "fraud_degraded_total"
MODEL_INFO = "fraud_model_info"
BATCH_SIZE = "fraud_batch_size"
STORE_LATENCY = "fraud_feature_store_latency_seconds"
STORE_ERRORS = "fraud_feature_store_errors_total"
LABELS = "fraud_labels_total"

METRIC_NAMES: tuple[str, ...] = (
    DECISIONS,
    RULE_HITS,
    PROBABILITY,
    DEGRADED,
    MODEL_INFO,
    BATCH_SIZE,
    STORE_LATENCY,
    STORE_ERRORS,
    LABELS,
)

# Bucket edges. Ray requires strictly positive boundaries; values below the first edge land in it.
PROBABILITY_BUCKETS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99]
BATCH_SIZE_BUCKETS = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1000.0]
# Well under Ray's gauge retention (2 x metrics_report_interval_ms, 10 s by default).
MODEL_INFO_REFRESH_S = 5.0
STORE_LATENCY_BUCKETS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]


@dataclass(frozen=True)
class ScoreSummary:
    """What one scored batch adds to the counters, computed without Ray so it can be unit-tested."""

    decisions: dict[str, int] = field(default_factory=dict)
    rule_hits: dict[str, int] = field(default_factory=dict)
    degraded: int = 0
    probabilities: tuple[float, ...] = ()


def summarize_scores(
    decisions: Sequence[str],
    probabilities: Sequence[float] | np.ndarray,
    rule_hits: Sequence[Sequence[str]],
    degraded: Sequence[bool],
) -> ScoreSummary:
    """Aggregate a batch per tag value so each counter is incremented once per batch, not once per row."""
    n = len(decisions)
    for name, values in (("probabilities", probabilities), ("rule_hits", rule_hits), ("degraded", degraded)):
        if len(values) != n:
            raise ValueError(f"metrics: {name} has {len(values)} entries but decisions has {n}")
    probs = tuple(float(p) for p in np.asarray(probabilities, dtype=float).ravel())
    bad = [i for i, p in enumerate(probs) if not (math.isfinite(p) and 0.0 <= p <= 1.0)]
    if bad:
        raise ValueError(f"metrics: probabilities[{bad[0]}]={probs[bad[0]]!r} is not a probability in [0, 1]")
    hits: Tally[str] = Tally()
    for row_hits in rule_hits:
        # A rule listed twice for one transaction still fired once for it.
        hits.update(set(row_hits))
    return ScoreSummary(
        decisions=dict(Tally(decisions)),
        rule_hits=dict(hits),
        degraded=sum(1 for d in degraded if d),
        probabilities=probs,
    )


class _Registry:
    """The Ray metric objects of this process; built once, the first time Ray is seen running."""

    def __init__(self) -> None:
        from ray.util import metrics as ray_metrics  # Ray is only needed once it runs

        self.decisions = ray_metrics.Counter(
            DECISIONS, "Scored transactions by decision", tag_keys=("decision",)
        )
        self.rule_hits = ray_metrics.Counter(
            RULE_HITS, "Transactions on which a rule fired", tag_keys=("rule",)
        )
        self.probability = ray_metrics.Histogram(
            PROBABILITY, "Ensemble fraud probability of scored transactions", boundaries=PROBABILITY_BUCKETS
        )
        self.degraded = ray_metrics.Counter(DEGRADED, "Transactions scored without their feature history")
        self.model_info = ray_metrics.Gauge(
            MODEL_INFO, "1 for the model version this replica serves, 0 for one it served before",
            tag_keys=("version",),
        )  # fmt: skip
        self.batch_size = ray_metrics.Histogram(
            BATCH_SIZE, "Requests per batch handled by a deployment", boundaries=BATCH_SIZE_BUCKETS,
            tag_keys=("deployment",),
        )  # fmt: skip
        self.store_latency = ray_metrics.Histogram(
            STORE_LATENCY, "Round trip of one pipelined feature-store call", boundaries=STORE_LATENCY_BUCKETS
        )
        self.store_errors = ray_metrics.Counter(STORE_ERRORS, "Feature-store calls that failed")
        self.labels = ray_metrics.Counter(LABELS, "Feedback labels received", tag_keys=("label",))
        self.current_version: str | None = None
        self.refresher: threading.Thread | None = None


def _reject(message: str) -> None:
    # Metrics must never fail the request that is being measured: a bad call is logged and dropped.
    logger.warning("%s (not recorded)", message)


_lock = threading.Lock()
_registry: _Registry | None = None


def _ray_running() -> bool:
    # Imported here so that importing this module never pulls in (or starts) Ray.
    import ray

    return bool(ray.is_initialized())


def _get_registry() -> _Registry | None:
    """The process's metrics, or None when Ray is not running (unit tests, offline tools)."""
    global _registry  # one registry per process: Ray metrics are per-process objects
    if _registry is not None:
        return _registry
    if not _ray_running():
        return None
    with _lock:
        if _registry is None:
            _registry = _Registry()
    return _registry


def metrics_active() -> bool:
    """True when calls here reach Ray's exporter; False means they only validate their input."""
    return _get_registry() is not None


def record_scores(
    decisions: Sequence[str],
    probabilities: Sequence[float] | np.ndarray,
    rule_hits: Sequence[Sequence[str]],
    degraded: Sequence[bool],
    model_version: str,
) -> None:
    """Count one scored batch: decisions, rule hits, probabilities, degraded rows, model version."""
    try:
        summary = summarize_scores(decisions, probabilities, rule_hits, degraded)
    except ValueError as error:
        _reject(str(error))
        return
    registry = _get_registry()
    if registry is None:
        return
    for decision, count in summary.decisions.items():
        registry.decisions.inc(count, tags={"decision": str(decision)})
    for rule, count in summary.rule_hits.items():
        registry.rule_hits.inc(count, tags={"rule": str(rule)})
    for probability in summary.probabilities:
        registry.probability.observe(probability)
    if summary.degraded:
        registry.degraded.inc(summary.degraded)
    _set_version(registry, model_version)


def observe_batch_size(deployment: str, size: int) -> None:
    """One batch of `size` requests handled by `deployment` (ingress, fetcher, a model, rules)."""
    if size < 0:
        _reject(f"metrics: batch size must be >= 0, got {size}")
        return
    registry = _get_registry()
    if registry is None or size == 0:
        return
    registry.batch_size.observe(float(size), tags={"deployment": deployment})


def observe_store_latency(seconds: float, ok: bool) -> None:
    """One feature-store round trip; failed calls also count as errors (their latency is still telling)."""
    if not math.isfinite(seconds) or seconds < 0:
        _reject(f"metrics: store latency must be a finite number of seconds >= 0, got {seconds!r}")
        return
    registry = _get_registry()
    if registry is None:
        return
    registry.store_latency.observe(float(seconds))
    if not ok:
        registry.store_errors.inc(1)


def record_labels(n: int, is_fraud: int = 0) -> None:
    """`n` feedback labels received, `is_fraud` of them fraud (the rest genuine)."""
    if n < 0 or not 0 <= is_fraud <= n:
        _reject(f"metrics: need 0 <= is_fraud <= n, got n={n}, is_fraud={is_fraud}")
        return
    registry = _get_registry()
    if registry is None:
        return
    if is_fraud:
        registry.labels.inc(is_fraud, tags={"label": "fraud"})
    if n - is_fraud:
        registry.labels.inc(n - is_fraud, tags={"label": "genuine"})


def set_model_version(version: str) -> None:
    """Publish the served model version (call on load and on hot reload)."""
    registry = _get_registry()
    if registry is None:
        return
    _set_version(registry, version)


def _set_version(registry: _Registry, version: str) -> None:
    if registry.current_version == version:
        return
    with _lock:
        previous, registry.current_version = registry.current_version, version
        start_refresher = registry.refresher is None
        if start_refresher:
            registry.refresher = threading.Thread(
                target=_refresh_model_info, args=(registry,), name="fraud-model-info", daemon=True
            )
    # Zeroed rather than left to age out, so dashboards switch at the next export, not ~2 intervals later.
    if previous is not None:
        registry.model_info.set(0, tags={"version": previous})
    registry.model_info.set(1, tags={"version": version})
    if start_refresher and registry.refresher is not None:
        registry.refresher.start()


def _refresh_model_info(registry: _Registry) -> None:
    """Re-set the info gauge periodically: Ray drops a gauge series that was not set for ~2 export intervals,
    so an idle replica would otherwise vanish from "which version is served"."""
    while True:
        time.sleep(MODEL_INFO_REFRESH_S)
        version = registry.current_version
        if version is not None:
            registry.model_info.set(1, tags={"version": version})
