"""Schemathesis against the graph's own OpenAPI spec (valid and invalid requests): never a 5xx, nothing that
breaks the schema accepted; then card-number-like values in every field, which must never reach a log."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection

from loadtest.chaos_stack import DeployedGraph, files_containing, luhn_card_number, ray_logs_dir
from serve_app.redis_server import EmbeddedRedis

pytestmark = pytest.mark.integration

EXAMPLES_PER_CASE = 25  # x 4 operations x 2 modes: well under a minute on a busy 2-core machine
FUZZED = [("POST", p) for p in ("/v1/score", "/v1/score/batch", "/v1/feedback", "/v1/feedback/batch")]


@pytest.fixture(scope="module")
def api_schema(graph: DeployedGraph) -> Any:
    spec = httpx.get(f"{graph.base_url}/openapi.json", timeout=30).json()
    return schemathesis.openapi.from_dict(spec)


def test_every_operation_with_a_body_is_fuzzed(api_schema: Any) -> None:
    """A new route with a request body must be added to FUZZED, or this fails."""
    with_body = {
        (method.upper(), path)
        for path, item in api_schema.raw_schema["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and "requestBody" in operation
    }
    assert with_body == set(FUZZED)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize(("method", "path"), FUZZED)
@settings(
    max_examples=EXAMPLES_PER_CASE, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
@given(data=st.data())
def test_no_request_the_spec_allows_or_forbids_gets_a_5xx(
    graph: DeployedGraph, api_schema: Any, method: str, path: str, mode: GenerationMode, data: st.DataObject
) -> None:
    case = data.draw(api_schema[path][method].as_strategy(generation_mode=mode))
    headers = {"X-API-Key": graph.api_key}
    response = case.call(base_url=graph.base_url, headers=headers, timeout=30)
    assert response.status_code < 500, f"{method} {path}: {response.status_code} {response.text[:300]}"
    # Schema-breaking input must be refused; valid input answered as the spec says.
    case.validate_response(response, additional_checks=[negative_data_rejection], headers=headers)


def card_salted(pan: str) -> list[tuple[str, dict[str, Any]]]:
    """Requests with a card number in each field a client controls (valid and invalid positions)."""
    base = {
        "transaction_id": f"fz-{uuid.uuid4().hex[:10]}",
        "timestamp": "2026-02-03T14:05:00Z",
        "customer_id": "c-fuzz",
        "merchant_id": "m-fuzz",
        "amount": 12.5,
    }
    spaced = " ".join(pan[i : i + 4] for i in range(0, 16, 4))
    requests: list[tuple[str, dict[str, Any]]] = []
    for field in ("transaction_id", "customer_id", "merchant_id"):
        requests.append(("/v1/score", {**base, field: pan}))  # valid: ids may be all digits
    for field, value in (
        ("currency", spaced),
        ("merchant_category", pan),
        ("amount", pan),
        ("timestamp", pan),
    ):
        requests.append(("/v1/score", {**base, field: value}))
    requests.append(("/v1/score", {**base, "card_number": pan}))
    requests.append(("/v1/score/batch", {"transactions": [base, {**base, "lat": pan, "lon": 1.0}]}))
    requests.append(
        ("/v1/feedback", {"transaction_id": pan, "is_fraud": True, "labelled_at": "2026-02-04T00:00:00Z"})
    )
    requests.append(("/v1/feedback/batch", {"labels": [{"transaction_id": spaced, "is_fraud": 1}]}))
    return requests


def test_card_numbers_in_any_field_never_reach_a_log(
    graph: DeployedGraph, graph_redis: EmbeddedRedis
) -> None:
    pans = [luhn_card_number("4"), luhn_card_number("5")]
    with graph.client() as client:
        for pan in pans:
            for path, body in card_salted(pan):
                assert client.post(path, json=body).status_code < 500, (path, body)
            # The same id again with other content: the store's conflict warning names the transaction.
            conflict = {**card_salted(pan)[0][1], "transaction_id": pan, "amount": 99.0}
            assert client.post("/v1/score", json=conflict).status_code == 200
            # Headers a client controls end up in request ids and access logs if anything does.
            client.post("/v1/score", json={}, headers={"X-Request-ID": pan, "User-Agent": pan})
    time.sleep(1.5)  # Ray flushes worker output to its log files asynchronously
    spaced = [" ".join(p[i : i + 4] for i in range(0, 16, 4)) for p in pans]
    # The AOF is the store itself (ids are data there), not a log; Redis' own log is.
    leaked = files_containing(pans + spaced, [ray_logs_dir(), graph_redis.directory / "redis.log"])
    assert not leaked, f"card numbers found in logs: {leaked}"
