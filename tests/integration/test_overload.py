"""Overload is shed with 503 + Retry-After instead of queueing forever; a stuck graph answers a clear 504
within the request deadline instead of hanging."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from loadtest.chaos_stack import GRAPH_CONFIG, DeployedGraph, deployed_graph, replica_pids, wait_until_healthy
from serve_app.app import AppArgs
from serve_app.redis_server import EmbeddedRedis

pytestmark = pytest.mark.integration

FLOOD = 600  # far beyond max_ongoing_requests + max_queued_requests of the Ingress (64 + 32)


def payload() -> dict[str, object]:
    return {
        "transaction_id": f"ov-{uuid.uuid4().hex[:12]}",
        "timestamp": datetime.now(UTC).isoformat(),
        "customer_id": f"c-{uuid.uuid4().hex[:4]}",
        "merchant_id": "m-overload",
        "amount": 30.0,
    }


def test_a_flood_is_shed_with_503_and_retry_after(graph: DeployedGraph) -> None:
    async def flood() -> list[httpx.Response | BaseException]:
        limits = httpx.Limits(max_connections=FLOOD, max_keepalive_connections=0)
        headers = {"X-API-Key": graph.api_key}
        async with httpx.AsyncClient(
            base_url=graph.base_url, headers=headers, limits=limits, timeout=60
        ) as client:
            return await asyncio.gather(
                *(client.post("/v1/score", json=payload()) for _ in range(FLOOD)), return_exceptions=True
            )

    started = time.monotonic()
    answers = asyncio.run(flood())
    elapsed = time.monotonic() - started
    responses = [a for a in answers if isinstance(a, httpx.Response)]
    assert len(responses) == FLOOD, [repr(a) for a in answers if not isinstance(a, httpx.Response)][:3]
    statuses = {r.status_code for r in responses}
    assert statuses <= {200, 503}, statuses
    shed = [r for r in responses if r.status_code == 503]
    assert shed, f"{FLOOD} simultaneous requests were all queued ({elapsed:.1f} s): nothing bounds the queue"
    assert all(r.headers.get("retry-after") == "1" for r in shed), {
        r.headers.get("retry-after") for r in shed
    }
    assert any(r.status_code == 200 for r in responses)


def test_a_stuck_model_gives_a_504_within_the_deadline_not_a_hang(
    graph_redis: EmbeddedRedis, small_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """On the graph topology, where the model is a process of its own that can freeze (fused, a stuck
    predict runs in a worker thread and the same deadline answers; nothing can SIGSTOP a thread)."""
    deadline_s = AppArgs().request_deadline_s
    data_dir = tmp_path_factory.mktemp("stuck-graph")
    with (
        deployed_graph(graph_redis.url, small_bundle_dir, data_dir, config_path=GRAPH_CONFIG) as graph,
        graph.client() as client,
    ):
        assert client.post("/v1/score", json=payload()).status_code == 200  # warm: replicas are up
        frozen = replica_pids("XGBoostModel")
        assert frozen, "no XGBoostModel replica process found on this Ray node"
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)  # a replica stuck in GC or swap: alive, but silent
        try:
            started = time.monotonic()
            response = client.post("/v1/score", json=payload())
            waited = time.monotonic() - started
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        wait_until_healthy(timeout_s=120)
    assert response.status_code == 504, response.text
    assert "resend" in response.json()["detail"]
    assert waited < deadline_s + 3.0, f"answered after {waited:.1f} s"
