"""Detection report of a replay: live scores joined with the file's labels, measured with train.evaluate."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from train.evaluate import at_threshold, card_precision_at_k, pr_auc, roc_auc

SCORE_COLUMNS = ("transaction_id", "fraud_probability", "decision", "degraded")
LABEL_COLUMNS = ("transaction_id", "timestamp", "customer_id", "is_fraud")
DECISIONS = ("approve", "review", "decline")
CARD_PRECISION_K = 100


class ReportError(ValueError):
    """Scores and labels that cannot be joined into a report; the message names what is wrong."""


class FlaggedQuality(BaseModel):
    """How good the transactions flagged by one decision rule are."""

    precision: float | None = Field(description="Share of flagged transactions that are fraud")
    recall: float | None = Field(description="Share of frauds that were flagged")
    flagged_rate: float = Field(description="Share of all transactions flagged")


class DetectionReport(BaseModel):
    """Everything the replay prints and saves; undefined metrics (e.g. no fraud in the period) are null."""

    period_start: str | None
    period_end: str | None
    transactions: int
    frauds: int
    fraud_rate: float | None
    roc_auc: float | None
    pr_auc: float | None
    card_precision_at_100_mean: float | None
    card_precision_at_100_per_day: dict[str, float | None]
    decline: FlaggedQuality
    review_or_decline: FlaggedQuality
    review_rate: float
    decline_rate: float
    degraded_share: float
    elapsed_s: float | None = None
    throughput_tps: float | None = Field(None, description="Transactions scored per second of replay")


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _require(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ReportError(f"{what} is missing column(s) {missing}; expected {list(columns)}")


def join_scores_with_labels(scores: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """One row per scored transaction with its label, day and customer; every score must have a label."""
    _require(scores, SCORE_COLUMNS, "scores")
    _require(labels, LABEL_COLUMNS, "labels")
    if scores["transaction_id"].duplicated().any():
        dup = scores.loc[scores["transaction_id"].duplicated(), "transaction_id"].iloc[0]
        raise ReportError(f"scores: transaction_id {dup!r} appears more than once")
    unknown = sorted(set(scores["transaction_id"].astype(str)) - set(labels["transaction_id"].astype(str)))
    if unknown:
        raise ReportError(f"scores: {len(unknown)} transaction_id(s) have no label, e.g. {unknown[0]!r}")
    probability = pd.to_numeric(scores["fraud_probability"], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(probability) | (probability < 0) | (probability > 1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        value = scores["fraud_probability"].iloc[row]
        raise ReportError(f"scores row {row + 1}: fraud_probability {value} is not within [0, 1]")
    decisions = scores["decision"].astype(str)
    odd = ~decisions.isin(DECISIONS).to_numpy()
    if odd.any():
        row = int(np.flatnonzero(odd)[0])
        raise ReportError(f"scores row {row + 1}: decision {decisions.iloc[row]!r} is not one of {DECISIONS}")
    scored = pd.DataFrame(
        {
            "transaction_id": scores["transaction_id"].astype(str).to_numpy(),
            "fraud_probability": probability,
            "decision": decisions.to_numpy(),
            "degraded": scores["degraded"].astype(bool).to_numpy(),
        }
    )
    keyed = labels.loc[:, list(LABEL_COLUMNS)].assign(transaction_id=labels["transaction_id"].astype(str))
    joined = scored.merge(keyed, on="transaction_id", how="left", validate="one_to_one")
    return joined.sort_values(["timestamp", "transaction_id"], kind="mergesort").reset_index(drop=True)


def card_precision_per_day(joined: pd.DataFrame, k: int = CARD_PRECISION_K) -> dict[str, float | None]:
    """train.evaluate's card precision@k applied to each UTC day on its own (its mean is the overall one)."""
    days = joined["timestamp"].dt.tz_convert("UTC").dt.floor("D")
    out: dict[str, float | None] = {}
    for day, part in joined.groupby(days, sort=True):
        value = card_precision_at_k(
            part["is_fraud"].to_numpy(),
            part["fraud_probability"].to_numpy(),
            part["customer_id"].to_numpy(),
            part["timestamp"],
            k,
        )
        out[pd.Timestamp(day).strftime("%Y-%m-%d")] = _finite_or_none(value)
    return out


def _flagged(y: np.ndarray, flagged: np.ndarray) -> FlaggedQuality:
    # A 0/1 indicator with threshold 1 turns train.evaluate's threshold metric into a decision metric.
    quality = at_threshold(y, flagged.astype(np.float64), 1.0)
    return FlaggedQuality(
        precision=_finite_or_none(quality["precision"]),
        recall=_finite_or_none(quality["recall"]),
        flagged_rate=quality["flagged_rate"],
    )


def build_report(
    scores: pd.DataFrame,
    labels: pd.DataFrame,
    *,
    period_from: pd.Timestamp | None = None,
    elapsed_s: float | None = None,
    scored_count: int | None = None,
) -> DetectionReport:
    """The detection report over scored transactions at or after `period_from` (all when None).

    Throughput is `scored_count` (default: every score given, before the period filter) over `elapsed_s`.
    """
    joined = join_scores_with_labels(scores, labels)
    if period_from is not None:
        joined = joined[joined["timestamp"] >= period_from].reset_index(drop=True)
    y = joined["is_fraud"].to_numpy(dtype=np.int64)
    p = joined["fraud_probability"].to_numpy(dtype=np.float64)
    decision = joined["decision"].to_numpy()
    n = len(joined)
    per_day = card_precision_per_day(joined) if n else {}
    defined = [v for v in per_day.values() if v is not None]
    scored = len(scores) if scored_count is None else scored_count
    throughput = scored / elapsed_s if elapsed_s else None
    return DetectionReport(
        period_start=joined["timestamp"].iloc[0].isoformat() if n else None,
        period_end=joined["timestamp"].iloc[-1].isoformat() if n else None,
        transactions=n,
        frauds=int(y.sum()),
        fraud_rate=float(y.mean()) if n else None,
        roc_auc=_finite_or_none(roc_auc(y, p)) if n else None,
        pr_auc=_finite_or_none(pr_auc(y, p)) if n else None,
        card_precision_at_100_mean=float(np.mean(defined)) if defined else None,
        card_precision_at_100_per_day=per_day,
        decline=_flagged(y, decision == "decline"),
        review_or_decline=_flagged(y, np.isin(decision, ("review", "decline"))),
        review_rate=float(np.mean(decision == "review")) if n else 0.0,
        decline_rate=float(np.mean(decision == "decline")) if n else 0.0,
        degraded_share=float(joined["degraded"].mean()) if n else 0.0,
        elapsed_s=elapsed_s,
        throughput_tps=throughput,
    )


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_report(report: DetectionReport) -> str:
    """The report as a few aligned lines for the terminal."""
    lines = [
        f"period            {report.period_start} .. {report.period_end}",
        f"transactions      {report.transactions} ({report.frauds} fraud, rate {_fmt(report.fraud_rate)})",
        f"ROC-AUC           {_fmt(report.roc_auc)}",
        f"PR-AUC            {_fmt(report.pr_auc)}",
        f"card precision@100 per day, mean {_fmt(report.card_precision_at_100_mean)}",
    ]
    for day, value in report.card_precision_at_100_per_day.items():
        lines.append(f"  {day}       {_fmt(value)}")
    for name, quality in (("decline", report.decline), ("review+decline", report.review_or_decline)):
        lines.append(
            f"{name:<17} precision {_fmt(quality.precision)}  recall {_fmt(quality.recall)}"
            f"  flagged {_fmt(quality.flagged_rate)}"
        )
    lines += [
        f"review rate       {_fmt(report.review_rate)}",
        f"decline rate      {_fmt(report.decline_rate)}",
        f"degraded share    {_fmt(report.degraded_share)}",
    ]
    if report.throughput_tps is not None:
        lines.append(
            f"throughput        {report.throughput_tps:.0f} transactions/s over {report.elapsed_s:.1f} s"
        )
    return "\n".join(lines)
