"""Labels are never lost: what was acknowledged survives kill -9 of Redis and a restart, a label is never
acknowledged while it cannot be stored, and a repeated label is not counted twice."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import redis

from loadtest.chaos_stack import DeployedGraph
from serve_app.features.online import KeySchema, LabelEvent, StoreEvent, SyncOnlineFeatureStore
from serve_app.redis_server import EmbeddedRedis

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
KEYS = KeySchema("fraud:")


def stored_labels(url: str, txids: list[str]) -> list[str | None]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        pipe = client.pipeline(transaction=False)
        for txid in txids:
            pipe.hget(KEYS.transaction(txid), "label")
        return list(pipe.execute())
    finally:
        client.close()


def test_the_embedded_server_fsyncs_every_write_before_acknowledging_it(tmp_path: Path) -> None:
    with EmbeddedRedis(directory=tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("appendfsync")["appendfsync"] == "always"
        client.close()


def test_acknowledged_labels_survive_kill_9_and_a_restart(tmp_path: Path) -> None:
    server = EmbeddedRedis(directory=tmp_path / "redis").start()
    try:
        store = SyncOnlineFeatureStore(server.url)
        txids = [f"tx-{i}" for i in range(300)]
        store.replay(
            [StoreEvent(t, T0 + i * 1000, f"c{i % 30}", "m-1", 10.0, None, None) for i, t in enumerate(txids)]
        )
        labels = [LabelEvent(t, i % 3 == 0, T0 + 86_400_000 + i) for i, t in enumerate(txids)]
        acknowledged: list[str] = []
        for start in range(0, len(labels), 10):  # many small acknowledged writes, the last one just now
            assert store.apply_labels(labels[start : start + 10]) == ["recorded"] * 10
            acknowledged.extend(label.transaction_id for label in labels[start : start + 10])
        store.close()
        server.kill()  # no shutdown, no final fsync: whatever was acknowledged must already be on disk
        server.start()
        assert stored_labels(server.url, acknowledged) == ["1" if label.is_fraud else "0" for label in labels]
        frauds = sum(label.is_fraud for label in labels)
        client = redis.Redis.from_url(server.url)
        assert client.zcard(KEYS.merchant_labels("m-1")) == frauds
        client.close()

        again = SyncOnlineFeatureStore(server.url)
        assert again.apply_labels(labels) == ["unchanged"] * len(labels)
        probe = StoreEvent("probe", T0 + 2 * 86_400_000, "c-new", "m-1", 5.0, None, None)
        assert again.fetch_and_update([probe])["merch_fraud_labels_7d"][0] == frauds  # counted once
        again.close()
    finally:
        server.stop()


def label_payload(txid: str, is_fraud: bool) -> dict[str, object]:
    return {"transaction_id": txid, "is_fraud": is_fraud, "labelled_at": "2026-01-03T09:00:00Z"}


def score_payload(txid: str, minute: int) -> dict[str, object]:
    stamp = datetime.fromtimestamp(T0 / 1000 + minute * 60, UTC).isoformat().replace("+00:00", "Z")
    return {
        "transaction_id": txid,
        "timestamp": stamp,
        "customer_id": "c-api",
        "merchant_id": "m-api",
        "amount": 20.0,
    }


def test_labels_acknowledged_by_the_api_survive_kill_9_of_its_redis(
    graph: DeployedGraph, graph_redis: EmbeddedRedis
) -> None:
    txids = [f"api-label-{i}" for i in range(40)]
    with graph.client() as client:
        scored = client.post(
            "/v1/score/batch", json={"transactions": [score_payload(t, i) for i, t in enumerate(txids)]}
        )
        assert scored.status_code == 200
        assert not any(r["degraded"] for r in scored.json()["results"]), (
            "the store must have these transactions"
        )
        flags = [i % 2 == 0 for i in range(len(txids))]
        for txid, flag in zip(txids, flags, strict=True):
            response = client.post("/v1/feedback", json=label_payload(txid, flag))
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "recorded"
        graph_redis.kill()
        try:
            refused = client.post("/v1/feedback", json=label_payload(txids[0], False))
            # Not stored, so not acknowledged: a retryable 503, never a 200 and never a 500.
            assert refused.status_code == 503, refused.text
        finally:
            graph_redis.start()
        assert stored_labels(graph_redis.url, txids) == ["1" if f else "0" for f in flags]
        deadline = time.monotonic() + 15
        repeated: httpx.Response | None = None
        while time.monotonic() < deadline:  # the replica reconnects on its next call
            repeated = client.post("/v1/feedback", json=label_payload(txids[1], flags[1]))
            if repeated.status_code == 200:
                break
            time.sleep(0.2)
        assert repeated is not None
        assert repeated.status_code == 200
        assert repeated.json()["status"] == "unchanged"
