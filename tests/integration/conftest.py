"""Integration fixtures: a small bundle trained once per session, and the real graph shared by modules.

The graph is serve_config.yaml as shipped (deployments, batching, limits) with only what a test must own
changed: its Redis, the bundle directory (no registry round trip) and fresh keys (loadtest.chaos_stack).
Every module that asks for `graph` re-deploys the same config: a no-op while it still runs, a fresh deploy
when another module replaced the "fraud" app with its own in between. Serve's shutdown at the end of the
session removes it.
"""

from __future__ import annotations

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
def graph_spec(
    redis_server: EmbeddedRedis, small_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> GraphSpec:
    return prepare_graph(redis_server.url, small_bundle_dir, tmp_path_factory.mktemp("graph-data"))


@pytest.fixture(scope="module")
def graph(ray_session: None, redis_server: EmbeddedRedis, graph_spec: GraphSpec) -> DeployedGraph:
    """The graph on the session's Redis (emptied first), ready for one test module."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return deploy_graph(graph_spec)
