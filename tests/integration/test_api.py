"""The real graph from serve_config.yaml: a champion trained into a temp MLflow store, the session's Redis
and Ray, requests over HTTP. One deployment for the whole module keeps it fast."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis
from ray import serve

from serve_app.redis_server import EmbeddedRedis, free_port
from serve_app.run import REPO_ROOT, deploy, read_config
from train.fit import FitConfig, fit_bundle
from train.generate import GeneratorConfig, generate
from train.pipeline import features_for, split_by_time
from train.registry import log_and_register

pytestmark = pytest.mark.integration
API_KEY = "it-" + uuid.uuid4().hex
MODEL = "fraud-scorer"


@pytest.fixture(scope="module")
def champion_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small champion trained with the training code and registered in a module-private MLflow store."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    df = generate(GeneratorConfig(customers=300, merchants=80, days=21, seed=5, fraud_rate_target=0.03))
    x, y = features_for(df, 2.0), df["is_fraud"].to_numpy()
    splits = split_by_time(df["timestamp"])
    # Fit only (no holdout report): the graph needs a real bundle, not the training evaluation.
    fitted = fit_bundle(
        x[splits.train],
        y[splits.train],
        x[splits.validation],
        y[splits.validation],
        FitConfig(xgb_max_rounds=40),
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FRAUD_DATA_DIR", str(root / "data"))  # where the experiment keeps its artifacts
        registered = log_and_register(
            fitted.bundle,
            experiment="it-api",
            model_name=MODEL,
            tracking_uri=uri,
            params={"purpose": "integration test"},
            metrics=fitted.validation,
            alias="champion",
        )
    assert registered.version == "1"
    return uri


@pytest.fixture(scope="module")
def api(
    ray_session: None,
    redis_server: EmbeddedRedis,
    champion_uri: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[httpx.Client]:
    """serve_config.yaml deployed as `make run` deploys it, with test args, a test key and a free port."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    config = read_config(REPO_ROOT / "serve_config.yaml")
    config.http_options.port = free_port()
    (app,) = config.applications
    app.args = {
        **app.args,
        "tracking_uri": champion_uri,
        "model_cache_dir": str(tmp_path_factory.mktemp("model_cache")),
        "redis_url": redis_server.url,
    }
    app.runtime_env = {"env_vars": {"FRAUD_API_KEYS": f"other-key,{API_KEY}"}}
    port = deploy(config, timeout_s=240)
    with httpx.Client(
        base_url=f"http://127.0.0.1:{port}", timeout=30, headers={"X-API-Key": API_KEY}
    ) as http:
        yield http
    serve.delete(app.name)


def _tx(**overrides: Any) -> dict[str, Any]:
    tx = {
        "transaction_id": f"tx-{uuid.uuid4().hex[:12]}",
        "timestamp": "2026-02-03T14:05:00Z",
        "customer_id": f"cust-{uuid.uuid4().hex[:8]}",
        "merchant_id": "merch-0001",
        "amount": 42.5,
        "currency": "EUR",
        "merchant_category": "grocery",
        "channel": "pos",
        "lat": 48.8566,
        "lon": 2.3522,
    }
    return {**tx, **overrides}


def test_score_returns_a_complete_response(api: httpx.Client) -> None:
    tx = _tx()
    response = api.post("/v1/score", json=tx)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["transaction_id"] == tx["transaction_id"]
    assert body["decision"] in ("approve", "review", "decline")
    assert 0.0 <= body["fraud_probability"] <= 1.0
    assert set(body["model_probabilities"]) == {"logistic_regression", "xgboost"}
    assert body["model_version"] == "1"
    assert body["degraded"] is False
    assert len(body["reasons"]) == 3
    assert body["reasons"][0]["feature"]


def test_same_transaction_twice_gets_the_same_answer(api: httpx.Client) -> None:
    tx = _tx(amount=880.0, channel="online", lat=None, lon=None)
    first = api.post("/v1/score", json=tx)
    second = api.post("/v1/score", json=tx)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()


def test_batch_keeps_order_and_history_within_the_batch(api: httpx.Client) -> None:
    """Ten small payments in an hour, then a tiny one: the store sees the burst and the rule declines."""
    customer = f"cust-{uuid.uuid4().hex[:8]}"
    start = datetime(2026, 2, 3, 10, 0, tzinfo=UTC)
    burst = [
        _tx(customer_id=customer, timestamp=(start + timedelta(minutes=3 * i)).isoformat(), amount=2.0 + i)
        for i in range(11)
    ]
    burst[-1]["amount"] = 1.0
    response = api.post("/v1/score/batch", json={"transactions": burst})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["transaction_id"] for r in results] == [t["transaction_id"] for t in burst]
    assert "card_testing_burst" not in results[0]["rule_hits"]
    assert "card_testing_burst" in results[-1]["rule_hits"]
    assert results[-1]["decision"] == "decline"


def test_batch_over_the_limit_is_422(api: httpx.Client) -> None:
    response = api.post("/v1/score/batch", json={"transactions": [_tx() for _ in range(1001)]})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "transactions"]


def test_feedback_records_scored_transactions_and_404s_unknown_ones(api: httpx.Client) -> None:
    tx = _tx()
    assert api.post("/v1/score", json=tx).status_code == 200
    label = {"transaction_id": tx["transaction_id"], "is_fraud": True, "labelled_at": "2026-02-05T09:00:00Z"}
    first = api.post("/v1/feedback", json=label)
    assert first.status_code == 200, first.text
    assert first.json() == {"transaction_id": tx["transaction_id"], "status": "recorded"}
    assert api.post("/v1/feedback", json=label).json()["status"] == "unchanged"
    unknown = api.post("/v1/feedback", json={**label, "transaction_id": "never-scored-1"})
    assert unknown.status_code == 404
    assert "never-scored-1" in unknown.json()["detail"]
    batch = api.post("/v1/feedback/batch", json={"labels": [label, {**label, "transaction_id": "never-2"}]})
    assert batch.status_code == 200
    assert batch.json() == {
        "results": [{"transaction_id": tx["transaction_id"], "status": "unchanged"}],
        "unknown": ["never-2"],
    }


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}])
@pytest.mark.parametrize("path", ["/v1/score", "/v1/score/batch", "/v1/feedback", "/v1/feedback/batch"])
def test_protected_routes_need_a_valid_key(api: httpx.Client, path: str, headers: dict[str, str]) -> None:
    response = httpx.post(f"{api.base_url}{path}", json=_tx(), headers=headers, timeout=30)
    assert response.status_code == 401
    assert response.json()["detail"] == "missing or invalid X-API-Key header"


def test_health_readiness_and_docs_need_no_key(api: httpx.Client) -> None:
    assert httpx.get(f"{api.base_url}/healthz", timeout=30).json() == {"status": "alive"}
    ready = httpx.get(f"{api.base_url}/readyz", timeout=30)
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "model_version": "1", "store": "ok", "models": "ok"}
    assert httpx.get(f"{api.base_url}/docs", timeout=30).status_code == 200
    paths = httpx.get(f"{api.base_url}/openapi.json", timeout=30).json()["paths"]
    assert {"/v1/score", "/v1/score/batch", "/v1/feedback", "/v1/feedback/batch"} <= set(paths)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (json.dumps(_tx(unexpected="x")), "unexpected"),
        (json.dumps(_tx()).replace('"amount": 42.5', '"amount": NaN'), "amount"),
        (json.dumps(_tx(amount=-5)), "amount"),
        (json.dumps(_tx(amount=0)), "amount"),
        (json.dumps(_tx(timestamp="not-a-time")), "timestamp"),
        (json.dumps(_tx(timestamp="2026-02-03T14:05:00")), "timestamp"),
        (json.dumps(_tx(lat=91.0)), "lat"),
    ],
)
def test_bad_input_is_422_naming_the_field(api: httpx.Client, body: str, field: str) -> None:
    response = api.post("/v1/score", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert ["body", field] in [e["loc"] for e in response.json()["detail"]]


def test_malformed_json_is_a_clear_422(api: httpx.Client) -> None:
    response = api.post("/v1/score", content='{"amount": 3,', headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"].startswith("malformed JSON")


def test_huge_body_is_413(api: httpx.Client) -> None:
    response = api.post("/v1/score", content=b"[" * 2_000_000, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]


def test_sample_payloads_are_valid_requests(api: httpx.Client) -> None:
    for sample in sorted((REPO_ROOT / "configs" / "samples").glob("*.json")):
        tx = json.loads(sample.read_text())
        response = api.post("/v1/score", json={**tx, "transaction_id": f"it-{uuid.uuid4().hex[:10]}"})
        assert response.status_code == 200, f"{sample.name}: {response.text}"
