"""The two shipped topologies are one product: the same stream scored through the fused app
(serve_config.yaml) and through the graph (configs/serve_graph.yaml) gets identical answers, labels included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from loadtest.chaos_stack import GRAPH_CONFIG, SERVE_CONFIG, deployed_graph
from serve_app.redis_server import EmbeddedRedis

pytestmark = pytest.mark.integration
CUSTOMERS = 6


def _stream(run: str) -> list[dict[str, Any]]:
    """Repeat customers and merchants, so velocity windows, first visits and distances all move."""
    stream = []
    for i in range(60):
        stream.append(
            {
                "transaction_id": f"{run}-{i:03d}",
                "timestamp": f"2026-02-03T{8 + i // 6:02d}:{(i * 7) % 60:02d}:00Z",
                "customer_id": f"{run}-cust-{i % CUSTOMERS}",
                "merchant_id": f"merch-{i % 4:04d}",
                # Every 17th a very large amount: the large_amount rule fires and overrides the models.
                "amount": round(12.5 + 97.3 * (i % 9) + (12_000.0 if i % 17 == 16 else 0.0), 2),
                "currency": "EUR",
                "merchant_category": ("grocery", "electronics", "travel")[i % 3],
                "channel": ("pos", "online")[i % 2],
                "lat": 48.85 + 0.01 * (i % 5),
                "lon": 2.35 - 0.02 * (i % 3),
            }
        )
    return stream


def _score_everything(
    config_path: Path, redis_server: EmbeddedRedis, bundle_dir: Path, data_dir: Path
) -> tuple[set[str], list[dict[str, Any]]]:
    """A fresh store; one-by-one scores, a label, then a batch whose features see that label. Returns the
    deployments that ran and every answer."""
    from ray import serve

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    run = "topo"  # the same ids in both runs: the stores are emptied in between
    stream = _stream(run)
    answers: list[dict[str, Any]] = []
    with (
        deployed_graph(redis_server.url, bundle_dir, data_dir, config_path=config_path) as graph,
        graph.client() as http,
    ):
        deployments = set(serve.status().applications[graph.app_name].deployments)
        for tx in stream[:40]:
            response = http.post("/v1/score", json=tx)
            assert response.status_code == 200, response.text
            answers.append(response.json())
        label = {"transaction_id": f"{run}-003", "is_fraud": True, "labelled_at": "2026-02-03T11:00:00Z"}
        labelled = http.post("/v1/feedback", json=label)
        assert labelled.status_code == 200, labelled.text
        batch = http.post("/v1/score/batch", json={"transactions": stream[40:]})
        assert batch.status_code == 200, batch.text
        answers.extend(batch.json()["results"])
    assert not any(a["degraded"] for a in answers), "a degraded answer cannot be compared"
    return deployments, answers


def test_fused_and_graph_topologies_answer_identically(
    ray_session: None,
    redis_server: EmbeddedRedis,
    small_bundle_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    fused_ran, fused = _score_everything(
        SERVE_CONFIG, redis_server, small_bundle_dir, tmp_path_factory.mktemp("fused")
    )
    graph_ran, graph = _score_everything(
        GRAPH_CONFIG, redis_server, small_bundle_dir, tmp_path_factory.mktemp("graph")
    )
    assert fused_ran == {"Ingress"}
    assert graph_ran == {"Ingress", "FeatureFetcher", "LogisticRegressionModel", "XGBoostModel", "RuleEngine"}
    assert len(fused) == len(graph) == 60
    for one, other in zip(fused, graph, strict=True):
        assert one == other
    # Not a vacuous equality: several decisions, rule hits, and probabilities that vary with history.
    assert {a["decision"] for a in fused} >= {"approve", "review"}
    assert any(a["rule_hits"] for a in fused)
    assert len({a["fraud_probability"] for a in fused}) > 10
