"""Pydantic models for every HTTP boundary: transactions in, scores and feedback out."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic.json_schema import JsonDict

# Limits shared with the offline loader (train.data) so a file row and an HTTP body obey the same rules.
MAX_AMOUNT = 1_000_000.0
ID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,64}$"
CHANNELS = ("pos", "online", "atm")
MAX_BATCH = 1000

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Decision = Literal["approve", "review", "decline"]
Identifier = Annotated[str, Field(pattern=ID_PATTERN, description="1-64 chars: letters, digits, _ . : -")]


# Date, time and offset as text. A bare number is refused: epoch seconds and milliseconds cannot be told
# apart reliably, and a guess puts the event in the wrong window.
_RFC3339_TEXT = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _require_rfc3339_text(value: object) -> object:
    if isinstance(value, datetime) or (isinstance(value, str) and _RFC3339_TEXT.match(value)):
        return value
    raise ValueError("timestamp must be an RFC 3339 string, e.g. 2026-01-31T23:15:00Z")


def _require_timezone(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must carry a timezone offset (RFC 3339), e.g. 2026-01-31T23:15:00Z")
    return value


Timestamp = Annotated[datetime, BeforeValidator(_require_rfc3339_text), AfterValidator(_require_timezone)]


_NO_COORDINATES: JsonDict = {"properties": {"lat": {"type": "null"}, "lon": {"type": "null"}}}
_BOTH_COORDINATES: JsonDict = {
    "required": ["lat", "lon"],
    "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
}


class Transaction(BaseModel):
    """One payment to score; `transaction_id` is the idempotency key, `timestamp` the event time."""

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        str_strip_whitespace=False,
        # The pairing rule below, stated in the OpenAPI schema too, so clients and fuzzers know it.
        json_schema_extra={"anyOf": [_NO_COORDINATES, _BOTH_COORDINATES]},
    )

    transaction_id: Identifier
    timestamp: Timestamp
    customer_id: Identifier
    merchant_id: Identifier
    # strict: a JSON number only (true is not 1, "42.5" is not a number); ints are still accepted.
    amount: float = Field(gt=0, le=MAX_AMOUNT, strict=True, description="Amount in the currency's major unit")
    currency: str | None = Field(None, pattern=r"^[A-Z]{3}$")
    merchant_category: str | None = Field(None, pattern=r"^[a-z_]{1,32}$")
    channel: Literal["pos", "online", "atm"] | None = None
    lat: float | None = Field(None, ge=-90, le=90, strict=True)
    lon: float | None = Field(None, ge=-180, le=180, strict=True)

    @model_validator(mode="after")
    def _coordinates_come_in_pairs(self) -> Transaction:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("lat and lon must be given together")
        return self

    @property
    def timestamp_ms(self) -> int:
        """Epoch milliseconds, floored with integer arithmetic (float seconds can land 1 ms short)."""
        return (self.timestamp - _EPOCH) // timedelta(milliseconds=1)


class BatchScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    transactions: list[Transaction] = Field(min_length=1, max_length=MAX_BATCH)


class Reason(BaseModel):
    feature: str
    value: float
    contribution: float = Field(description="Signed push towards fraud (log-odds, averaged over models)")


class ScoreResponse(BaseModel):
    transaction_id: str
    decision: Decision
    fraud_probability: float
    model_probabilities: dict[str, float]
    rule_hits: list[str]
    reasons: list[Reason]
    model_version: str
    degraded: bool


class BatchScoreResponse(BaseModel):
    results: list[ScoreResponse]


class Feedback(BaseModel):
    """A label for a scored transaction (a chargeback, or a confirmed genuine payment)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    transaction_id: Identifier
    is_fraud: bool = Field(strict=True, description="JSON true or false")
    labelled_at: Timestamp


class BatchFeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: list[Feedback] = Field(min_length=1, max_length=MAX_BATCH)


class FeedbackResponse(BaseModel):
    transaction_id: str
    status: Literal["recorded", "unchanged", "corrected"]
