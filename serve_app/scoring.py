"""Pure scoring: ensemble probability, thresholds, rule overrides and top reasons, into ScoreResponses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from serve_app.bundle import ModelBundle
from serve_app.features.contract import REQUEST_ONLY_FEATURES
from serve_app.schemas import Decision, Reason, ScoreResponse

FloatArray = npt.NDArray[np.float64]
SEVERITY: dict[str, int] = {"approve": 0, "review": 1, "decline": 2}
TOP_REASONS = 3
MODEL_KEYS = ("logistic_regression", "xgboost")


class ModelOutput(NamedTuple):
    """One model's answer for a batch: the bundle version it came from, probabilities, contributions."""

    version: str
    probabilities: FloatArray  # (n,)
    contributions: FloatArray  # (n, F) log-odds per feature


@dataclass(frozen=True)
class RuleVerdicts:
    """The rule engine's answer for a batch, as plain columns."""

    hits: Sequence[Sequence[str]]
    actions: Sequence[Decision | None]


def model_decisions(
    probabilities: FloatArray, review_threshold: float, decline_threshold: float
) -> list[Decision]:
    """Thresholds are inclusive: p >= decline -> decline, p >= review -> review, else approve."""
    out: list[Decision] = []
    for p in np.asarray(probabilities, dtype=np.float64):
        out.append("decline" if p >= decline_threshold else "review" if p >= review_threshold else "approve")
    return out


def final_decision(model: Decision, rule_action: Decision | None) -> Decision:
    """Decline rule: overrides the model. Approve rule: whitelists. Review rule: lifts approve to review."""
    if rule_action is None:
        return model
    if rule_action == "review":
        return model if SEVERITY[model] > SEVERITY["review"] else "review"
    return rule_action


def merged_contributions(bundle: ModelBundle, lr: FloatArray, xgb: FloatArray) -> FloatArray:
    """Per-feature log-odds, averaged over the two models with the ensemble's own weight."""
    return bundle.lr_weight * np.asarray(lr, dtype=np.float64) + (1.0 - bundle.lr_weight) * np.asarray(
        xgb, dtype=np.float64
    )


def top_reasons(
    feature_names: Sequence[str],
    values: FloatArray,
    contributions: FloatArray,
    decision: Decision,
    degraded: bool,
    k: int = TOP_REASONS,
) -> list[Reason]:
    """The k features that pushed hardest towards the decision taken (towards fraud for review/decline,
    towards genuine for approve). A degraded row's history columns are fill values, so they give no reason.
    """
    candidates = [
        i
        for i, name in enumerate(feature_names)
        if np.isfinite(contributions[i]) and (not degraded or name in REQUEST_ONLY_FEATURES)
    ]
    sign = -1.0 if decision == "approve" else 1.0
    # Stable sort on the name as tie-break so equal contributions give the same reasons every time.
    candidates.sort(key=lambda i: (-sign * contributions[i], feature_names[i]))
    return [
        Reason(
            feature=feature_names[i],
            value=round(float(values[i]), 6),
            contribution=round(float(contributions[i]), 6),
        )
        for i in candidates[:k]
    ]


def check_same_version(bundle: ModelBundle, *outputs: ModelOutput) -> None:
    """Both models and the ensemble data must come from one bundle version, never a mix."""
    versions = {bundle.version, *(o.version for o in outputs)}
    if len(versions) != 1:
        raise VersionMismatchError(f"model answers come from different bundle versions: {sorted(versions)}")


class VersionMismatchError(RuntimeError):
    """Raised while a model reload is half-way through; the caller retries once."""


def score_batch(
    bundle: ModelBundle,
    transaction_ids: Sequence[str],
    features: FloatArray,
    degraded: Sequence[bool] | npt.NDArray[np.bool_],
    lr: ModelOutput,
    xgb: ModelOutput,
    rules: RuleVerdicts,
) -> list[ScoreResponse]:
    """Turn one batch of model and rule answers into responses, row order preserved."""
    n = len(transaction_ids)
    for name, size in (
        ("features", features.shape[0]),
        ("degraded", len(degraded)),
        ("lr.probabilities", len(lr.probabilities)),
        ("xgb.probabilities", len(xgb.probabilities)),
        ("rules.hits", len(rules.hits)),
        ("rules.actions", len(rules.actions)),
    ):
        if size != n:
            raise ValueError(f"score_batch: {name} has {size} rows for {n} transactions")
    check_same_version(bundle, lr, xgb)
    probability = bundle.combine(lr.probabilities, xgb.probabilities)
    by_model = model_decisions(probability, bundle.review_threshold, bundle.decline_threshold)
    contributions = merged_contributions(bundle, lr.contributions, xgb.contributions)
    responses = []
    for row, tx_id in enumerate(transaction_ids):
        decision = final_decision(by_model[row], rules.actions[row])
        responses.append(
            ScoreResponse(
                transaction_id=tx_id,
                decision=decision,
                fraud_probability=round(float(probability[row]), 6),
                model_probabilities={
                    MODEL_KEYS[0]: round(float(lr.probabilities[row]), 6),
                    MODEL_KEYS[1]: round(float(xgb.probabilities[row]), 6),
                },
                rule_hits=list(rules.hits[row]),
                reasons=top_reasons(
                    bundle.feature_names, features[row], contributions[row], decision, bool(degraded[row])
                ),
                model_version=bundle.version,
                degraded=bool(degraded[row]),
            )
        )
    return responses
