"""Integration fixtures: a small bundle trained once per session, and the real graph shared by modules.

The graph is serve_config.yaml as shipped (deployments, batching, limits) with only what a test must own
changed: its Redis, the bundle directory (no registry round trip) and fresh keys (loadtest.chaos_stack).
Its Redis is its own (`graph_redis`), not the session's, so fault tests may stop, kill and restart it; they
must leave it running.
Every module that asks for `graph` re-deploys the same config: a no-op while it still runs, a fresh deploy
when another module replaced the "fraud" app with its own in between. Serve's shutdown at the end of the
session removes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from loadtest.chaos_stack import DeployedGraph, GraphSpec, deploy_graph, prepare_graph, train_small_bundle
from serve_app.redis_server import EmbeddedRedis


@pytest.fixture(scope="session")
def small_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A champion-like bundle trained once per session by the training code, saved as a directory."""
    return train_small_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="session")
def graph_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """The graph's own redis-server (AOF, appendfsync always, as the product embeds it)."""
    with EmbeddedRedis(directory=tmp_path_factory.mktemp("graph-redis")) as server:
        yield server


@pytest.fixture(scope="session")
def graph_spec(
    graph_redis: EmbeddedRedis, small_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> GraphSpec:
    return prepare_graph(graph_redis.url, small_bundle_dir, tmp_path_factory.mktemp("graph-data"))


@pytest.fixture(scope="module")
def graph(ray_session: None, graph_redis: EmbeddedRedis, graph_spec: GraphSpec) -> DeployedGraph:
    """The graph on its own Redis (emptied first), ready for one test module."""
    if graph_redis.process is None:
        graph_redis.start()  # a fault test that failed half-way left it stopped
    client = redis.Redis.from_url(graph_redis.url)
    client.flushall()
    client.close()
    return deploy_graph(graph_spec)
