"""Hypothesis properties of the request schemas: what is accepted is valid; only ValidationError is raised.

Each property states the rule independently of pydantic (an oracle written from the API contract), so a
schema that starts accepting `true` as an amount or a number as a timestamp fails here, not in production.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from serve_app.http_api import NonFiniteNumber
from serve_app.schemas import (
    CHANNELS,
    ID_PATTERN,
    MAX_AMOUNT,
    MAX_BATCH,
    BatchFeedbackRequest,
    BatchScoreRequest,
    Feedback,
    Transaction,
)

REQUEST_MODELS: tuple[type[BaseModel], ...] = (Transaction, Feedback, BatchScoreRequest, BatchFeedbackRequest)
ID_BODY = re.compile(ID_PATTERN.removeprefix("^").removesuffix("$"))
# RFC 3339 date-time: full date, time, optional fraction, and an offset that is mandatory.
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
VALID_TX: dict[str, Any] = {
    "transaction_id": "tx-1",
    "timestamp": "2026-02-03T14:05:00Z",
    "customer_id": "cust-1",
    "merchant_id": "merch-1",
    "amount": 42.5,
    "currency": "EUR",
    "merchant_category": "grocery",
    "channel": "pos",
    "lat": 48.8566,
    "lon": 2.3522,
}
VALID_LABEL: dict[str, Any] = {
    "transaction_id": "tx-1",
    "is_fraud": True,
    "labelled_at": "2026-02-05T09:00:00+01:00",
}

# ---- strategies -------------------------------------------------------------------------------------

huge_numbers = st.sampled_from([10**400, -(10**400), 2**1024, 1.7976931348623157e308, 5e-324, -0.0])
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    huge_numbers,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=80),
    st.sampled_from(["", " ", "NaN", "Infinity", "-inf", "1e400", "42.5", "true", "\x00", "🎉" * 40]),
    st.text(min_size=300, max_size=2_000),  # long strings, far past any field's limit
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
timestamps = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9998, 12, 30), timezones=st.timezones()).map(
        lambda d: d.isoformat()
    ),
    st.datetimes().map(lambda d: d.isoformat()),  # naive: no offset, must be refused
    st.integers(min_value=-(2**40), max_value=2**45),  # epoch numbers: ambiguous seconds/ms, refused
    st.from_regex(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})?\Z"),
    json_values,
)
field_values = st.one_of(
    json_values,
    timestamps,
    st.from_regex(ID_BODY, fullmatch=True),
    st.sampled_from(
        [*CHANNELS, "EUR", "usd", "grocery", 0, 1, 0.5, -91.0, 180.0, MAX_AMOUNT, MAX_AMOUNT + 0.01]
    ),
    st.floats(min_value=-200, max_value=2 * MAX_AMOUNT),
)


def deeply_nested(depth: int) -> Any:
    value: Any = 1.0
    for _ in range(depth):
        value = {"a": [value]}
    return value


# ---- the oracle: the API contract, written without pydantic -----------------------------------------


def is_json_number(value: Any) -> bool:
    """A JSON number: int or float, never a bool (true is not 1) and never a numeric string."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def finite_float(value: Any) -> float | None:
    if not is_json_number(value):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def valid_timestamp(value: Any) -> bool:
    if not isinstance(value, str) or not RFC3339.fullmatch(value):
        return False
    try:
        parsed = datetime.fromisoformat(value.replace(" ", "T").upper().replace("Z", "+00:00"))
    except ValueError:
        return False
    offset = parsed.utcoffset()
    return offset is not None and abs(offset) < timedelta(hours=24)


def valid_field(name: str, value: Any) -> bool:
    """Is `value` acceptable for Transaction field `name` on its own (ignoring the lat/lon pairing)?"""
    if name in ("transaction_id", "customer_id", "merchant_id"):
        return isinstance(value, str) and ID_BODY.fullmatch(value) is not None
    if name == "timestamp":
        return valid_timestamp(value)
    if name == "amount":
        number = finite_float(value)
        return number is not None and 0 < number <= MAX_AMOUNT
    if value is None:
        return name in ("currency", "merchant_category", "channel", "lat", "lon")
    if name == "currency":
        return isinstance(value, str) and re.fullmatch(r"[A-Z]{3}", value) is not None
    if name == "merchant_category":
        return isinstance(value, str) and re.fullmatch(r"[a-z_]{1,32}", value) is not None
    if name == "channel":
        return value in CHANNELS and isinstance(value, str)
    if name in ("lat", "lon"):
        number = finite_float(value)
        limit = 90.0 if name == "lat" else 180.0
        return number is not None and -limit <= number <= limit
    return False  # an unknown field


def valid_transaction(data: Any) -> bool:
    if not isinstance(data, dict):
        return False
    required = ("transaction_id", "timestamp", "customer_id", "merchant_id", "amount")
    if any(name not in data for name in required):
        return False
    if not all(valid_field(name, value) for name, value in data.items()):
        return False
    return (data.get("lat") is None) == (data.get("lon") is None)


def assert_only_validation_errors(model: type[BaseModel], data: Any) -> BaseModel | None:
    """Validate; a ValidationError is a fine answer, any other exception fails the property."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
    # Every error must point at a location, so the client can be told which field is wrong.
    assert errors
    assert all(isinstance(e["loc"], tuple) for e in errors)
    return None


# ---- properties -------------------------------------------------------------------------------------


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(data=json_values)
def test_arbitrary_json_raises_nothing_but_validation_error(data: Any) -> None:
    for model in REQUEST_MODELS:
        assert_only_validation_errors(model, data)


@settings(max_examples=150)
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200), json_values.map(json.dumps)))
def test_arbitrary_bytes_as_json_raise_nothing_but_validation_error(text: str | bytes) -> None:
    for model in REQUEST_MODELS:
        with contextlib.suppress(ValidationError):
            model.model_validate_json(text)


@settings(max_examples=250)
@given(field=st.sampled_from([*VALID_TX, "unknown_field", "Amount", "amount "]), value=field_values)
@example(field="amount", value=True)
@example(field="amount", value="42.5")
@example(field="amount", value=10**400)
@example(field="lat", value=False)
@example(field="timestamp", value=1_700_000_000)
@example(field="timestamp", value="1700000000000")
@example(field="timestamp", value="2026-02-03T14:05:00")
@example(field="timestamp", value="2026-02-03T14:05:00+24:00")
@example(field="transaction_id", value="a\n")
@example(field="channel", value="POS")
def test_a_transaction_is_accepted_exactly_when_the_contract_allows_it(field: str, value: Any) -> None:
    data = {**VALID_TX, field: value}
    if field in ("lat", "lon") and value is None:
        data["lat"] = data["lon"] = None  # pairing is its own property below
    model = assert_only_validation_errors(Transaction, data)
    assert (model is not None) == valid_transaction(data), f"{field}={value!r}"


@settings(max_examples=200)
@given(field=st.sampled_from(list(VALID_TX)), value=field_values)
def test_accepted_transactions_hold_the_contracts_invariants(field: str, value: Any) -> None:
    model = assert_only_validation_errors(Transaction, {**VALID_TX, field: value})
    if model is None:
        return
    assert isinstance(model, Transaction)
    assert math.isfinite(model.amount)
    assert 0 < model.amount <= MAX_AMOUNT
    assert model.timestamp.utcoffset() is not None
    assert isinstance(model.timestamp_ms, int)
    for coordinate, limit in ((model.lat, 90), (model.lon, 180)):
        assert coordinate is None or (math.isfinite(coordinate) and -limit <= coordinate <= limit)
    assert (model.lat is None) == (model.lon is None)
    for name in ("transaction_id", "customer_id", "merchant_id"):
        assert ID_BODY.fullmatch(getattr(model, name))


@given(name=st.text(min_size=1, max_size=30).filter(lambda n: n not in VALID_TX), value=json_values)
def test_an_unknown_field_is_refused_by_name(name: str, value: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        Transaction.model_validate({**VALID_TX, name: value})
    assert (name,) in [e["loc"] for e in caught.value.errors()]


@given(
    field=st.sampled_from(["amount", "lat", "lon"]),
    value=st.sampled_from(
        [math.nan, math.inf, -math.inf, NonFiniteNumber("NaN"), NonFiniteNumber("Infinity")]
    ),
)
def test_non_finite_numbers_are_refused_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        Transaction.model_validate({**VALID_TX, field: value})
    assert (field,) in [e["loc"] for e in caught.value.errors()]


@given(lat=st.one_of(st.none(), st.floats(-90, 90)), lon=st.one_of(st.none(), st.floats(-180, 180)))
def test_coordinates_come_in_pairs(lat: float | None, lon: float | None) -> None:
    model = assert_only_validation_errors(Transaction, {**VALID_TX, "lat": lat, "lon": lon})
    assert (model is not None) == ((lat is None) == (lon is None))


@pytest.mark.parametrize("model", REQUEST_MODELS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("depth", [50, 5_000])
def test_deep_nesting_is_a_validation_error(model: type[BaseModel], depth: int) -> None:
    nested = deeply_nested(depth)
    for data in (nested, {**VALID_TX, "amount": nested}, {"transactions": [nested]}, {"labels": nested}):
        assert assert_only_validation_errors(model, data) is None


@settings(max_examples=150)
@given(field=st.sampled_from([*VALID_LABEL, "extra"]), value=field_values)
@example(field="is_fraud", value=1)
@example(field="is_fraud", value="yes")
@example(field="labelled_at", value=1_700_000_000)
def test_a_label_is_accepted_exactly_when_the_contract_allows_it(field: str, value: Any) -> None:
    model = assert_only_validation_errors(Feedback, {**VALID_LABEL, field: value})
    if field == "transaction_id":
        allowed = valid_field("transaction_id", value)
    elif field == "is_fraud":
        allowed = isinstance(value, bool)  # JSON true/false; 1, "yes" or "on" are not labels
    elif field == "labelled_at":
        allowed = valid_timestamp(value)
    else:
        allowed = False
    assert (model is not None) == allowed, f"{field}={value!r}"


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    size=st.sampled_from([0, 1, 2, MAX_BATCH - 1, MAX_BATCH, MAX_BATCH + 1]),
    bad_at=st.one_of(st.none(), st.integers(min_value=0)),
    bad_value=json_values,
)
def test_a_batch_is_accepted_only_within_its_size_and_with_every_item_valid(
    size: int, bad_at: int | None, bad_value: Any
) -> None:
    items: list[Any] = [{**VALID_TX, "transaction_id": f"tx-{i}"} for i in range(size)]
    if bad_at is not None and items:
        items[bad_at % size] = bad_value
    model = assert_only_validation_errors(BatchScoreRequest, {"transactions": items})
    expected = 1 <= size <= MAX_BATCH and all(valid_transaction(item) for item in items)
    assert (model is not None) == expected


def test_the_oracle_accepts_the_reference_payloads() -> None:
    """Guards the oracle itself: if it refused everything, the equivalence properties would prove little."""
    assert valid_transaction(VALID_TX)
    assert valid_timestamp(datetime(2026, 1, 1, tzinfo=UTC).isoformat())
    assert Transaction.model_validate(VALID_TX).amount == 42.5
    assert Feedback.model_validate(VALID_LABEL).is_fraud is True
