"""The ingress's HTTP plumbing on a small real FastAPI app: auth, size limits, strict JSON, error bodies."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from serve_app.http_api import GuardMiddleware, StrictJSONRoute, install_error_handlers, keys_match
from serve_app.schemas import Transaction

KEYS = ["alpha-key", "beta-key"]
LIMIT = 4096
TX = {
    "transaction_id": "t1",
    "timestamp": "2026-01-15T02:30:00Z",
    "customer_id": "c1",
    "merchant_id": "m1",
    "amount": 12.5,
}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(GuardMiddleware, api_keys=KEYS, max_body_bytes=LIMIT)
    v1 = APIRouter(prefix="/v1", route_class=StrictJSONRoute)

    @v1.post("/echo")
    async def echo(transaction: Transaction) -> dict[str, float]:
        return {"amount": transaction.amount}

    @v1.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a genuine bug with secret detail")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    app.include_router(v1)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def _post(
    client: TestClient, body: str | bytes, key: str | None = "beta-key", **headers: str
) -> httpx.Response:
    sent = {"Content-Type": "application/json", **headers}
    if key is not None:
        sent["X-API-Key"] = key
    return client.post("/v1/echo", content=body, headers=sent)


def test_keys_match_needs_an_exact_configured_key() -> None:
    encoded = [k.encode() for k in KEYS]
    assert keys_match("alpha-key", encoded)
    assert keys_match("beta-key", encoded)
    assert not keys_match("alpha-ke", encoded)
    assert not keys_match("", encoded)
    assert not keys_match(None, encoded)
    assert not keys_match("", [b""])  # an empty key never authenticates


def test_valid_request_passes_with_either_key(client: TestClient) -> None:
    for key in KEYS:
        response = _post(client, json.dumps(TX), key=key)
        assert response.status_code == 200, response.text
        assert response.json() == {"amount": 12.5}
        assert response.headers["x-request-id"]


@pytest.mark.parametrize("key", [None, "wrong", "alpha-key "])
def test_missing_or_wrong_key_is_401_before_the_body_is_read(client: TestClient, key: str | None) -> None:
    response = _post(client, "not even json", key=key)
    assert response.status_code == 401
    assert "X-API-Key" in response.json()["detail"]
    assert client.get("/v1/boom", headers={"X-API-Key": key or ""}).status_code == 401


def test_health_needs_no_key(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "alive"}


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({**TX, "extra": 1}, "extra", "Extra inputs"),
        ({**TX, "amount": -1}, "amount", "greater than 0"),
        ({**TX, "amount": 1e12}, "amount", "less than or equal"),
        ({**TX, "timestamp": "2026-13-45T00:00:00Z"}, "timestamp", "datetime"),
        ({**TX, "timestamp": "2026-01-15T02:30:00"}, "timestamp", "timezone"),
    ],
)
def test_invalid_fields_are_422_naming_the_field(
    client: TestClient, body: dict[str, object], field: str, message: str
) -> None:
    response = _post(client, json.dumps(body))
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", field]
    assert message in error["msg"]
    assert "input" not in error  # the offending value is not echoed back


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_json_nan_and_infinity_are_rejected_naming_the_field(client: TestClient, token: str) -> None:
    body = json.dumps(TX).replace("12.5", token)
    response = _post(client, body)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "amount"]
    assert token in error["msg"]


def test_malformed_json_is_422_with_the_position(client: TestClient) -> None:
    response = _post(client, '{"transaction_id": ')
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["type"] == "json_invalid"
    assert error["msg"].startswith("malformed JSON")


def test_a_body_that_is_not_utf8_is_a_422_not_a_400(client: TestClient) -> None:
    response = _post(client, b'{"transaction_id": "\xff\xfe"}')
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["type"] == "json_invalid"
    assert "UTF-8" in error["msg"]


def test_body_without_json_content_type_is_415(client: TestClient) -> None:
    response = client.post("/v1/echo", content=json.dumps(TX), headers={"X-API-Key": "beta-key"})
    assert response.status_code == 415


def test_declared_oversize_body_is_413(client: TestClient) -> None:
    response = _post(client, b" " * (LIMIT + 1))
    assert response.status_code == 413
    assert str(LIMIT) in response.json()["detail"]


def test_streamed_oversize_body_is_413_even_without_content_length(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b" " * 1000

    response = client.post(
        "/v1/echo", content=chunks(), headers={"X-API-Key": "beta-key", "Content-Type": "application/json"}
    )
    assert response.status_code == 413


def test_genuine_bug_is_a_json_500_without_traceback(client: TestClient) -> None:
    response = client.get("/v1/boom", headers={"X-API-Key": "alpha-key", "X-Request-ID": "req-42"})
    assert response.status_code == 500
    body = response.json()
    assert body["request_id"] == "req-42"
    assert "secret" not in response.text
    assert "Traceback" not in response.text
