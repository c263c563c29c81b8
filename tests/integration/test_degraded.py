"""Redis down: the graph keeps answering 200 with degraded=true (never a 5xx), sends a large degraded payment
to review, reports not-ready, and stops degrading within the breaker's reset time once Redis is back."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from loadtest.chaos_stack import DeployedGraph
from serve_app.app import AppArgs
from serve_app.redis_server import EmbeddedRedis

pytestmark = pytest.mark.integration

BREAKER_RESET_S = AppArgs().breaker_reset_s  # the graph is deployed with serve_config.yaml's value
# A request's own trip through the graph and a reconnect, on a busy two-core CI machine.
RECOVERY_SLACK_S = 3.0


def payload(amount: float = 25.0, **overrides: Any) -> dict[str, Any]:
    return {
        "transaction_id": f"deg-{uuid.uuid4().hex[:12]}",
        "timestamp": datetime.now(UTC).isoformat(),
        "customer_id": "c-degraded",
        "merchant_id": "m-degraded",
        "amount": amount,
        "channel": "online",
        **overrides,
    }


def score(client: httpx.Client, amount: float = 25.0, sent: list[str] | None = None) -> httpx.Response:
    body = payload(amount)
    if sent is not None:
        sent.append(str(body["transaction_id"]))
    return client.post("/v1/score", json=body)


def warm_up(client: httpx.Client, tries: int = 40) -> None:
    """Until an answer comes from the store: a breaker left open by an earlier module closes first."""
    for _ in range(tries):
        response = score(client)
        assert response.status_code == 200, response.text
        if not response.json()["degraded"]:
            return
        time.sleep(0.25)
    pytest.fail(f"no answer from the store in {tries} tries before the fault was injected")


def recorded(url: str, txids: list[str]) -> int:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.exists(*(f"fraud:tx:{t}" for t in txids)))
    finally:
        client.close()


def test_redis_down_degrades_without_errors_and_recovers(
    graph: DeployedGraph, graph_redis: EmbeddedRedis
) -> None:
    with graph.client() as client:
        warm_up(client)
        graph_redis.stop()
        try:
            during: list[str] = []
            outage = [score(client, sent=during) for _ in range(25)]
            assert [r.status_code for r in outage] == [200] * len(outage), [
                r.text for r in outage if r.status_code != 200
            ]
            assert all(r.json()["degraded"] for r in outage[3:])  # the first calls may still be in flight
            large = score(client, amount=5_000.0)
            assert large.status_code == 200
            body = large.json()
            assert body["degraded"] is True
            assert body["decision"] != "approve"
            assert "degraded_high_amount" in body["rule_hits"]
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["store"] == "unreachable"
        finally:
            graph_redis.start()
        returned = time.monotonic()

        last_degraded = returned
        while time.monotonic() - returned < BREAKER_RESET_S + RECOVERY_SLACK_S + 2.0:
            response = score(client)
            assert response.status_code == 200
            if response.json()["degraded"]:
                last_degraded = time.monotonic()
            time.sleep(0.05)
        assert last_degraded - returned <= BREAKER_RESET_S + RECOVERY_SLACK_S
        assert score(client).json()["degraded"] is False
        assert client.get("/readyz").status_code == 200
    # Scored degraded, but not forgotten: the replica replays them into the store once it answers.
    deadline = time.monotonic() + 10
    while recorded(graph.redis_url, during) < len(during) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert recorded(graph.redis_url, during) == len(during)


def test_a_slow_redis_degrades_instead_of_stalling(graph: DeployedGraph, graph_redis: EmbeddedRedis) -> None:
    """CLIENT PAUSE holds every Redis command for longer than the request deadline: a request that waited
    for Redis would come back 504, so all-200 and degraded means none waited beyond the store deadline."""
    import redis

    pause_s = AppArgs().request_deadline_s + 2.0
    with graph.client() as client:
        warm_up(client)
        admin = redis.Redis.from_url(graph_redis.url)
        admin.execute_command("CLIENT", "PAUSE", str(int(pause_s * 1000)), "ALL")
        admin.close()
        started = time.monotonic()
        answers = [score(client) for _ in range(8)]
        assert [r.status_code for r in answers] == [200] * len(answers), [r.text for r in answers]
        assert sum(r.json()["degraded"] for r in answers) >= 6
        time.sleep(max(0.0, pause_s + 0.2 - (time.monotonic() - started)))
