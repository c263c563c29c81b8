"""Integration fixtures: a small bundle trained once per session, and the real graph deployed per module.

The graph is serve_config.yaml as shipped (deployments, batching, limits) with only what a test must own
changed: its Redis, the bundle directory (no registry round trip) and fresh keys (loadtest.chaos_stack).
One app named "fraud" on route "/" exists at a time, so the module that deployed it deletes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.chaos_stack import DeployedGraph, deployed_graph, train_small_bundle
from serve_app.redis_server import EmbeddedRedis


@pytest.fixture(scope="session")
def small_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A champion-like bundle trained once per session by the training code, saved as a directory."""
    return train_small_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def graph(
    ray_session: None,
    redis_server: EmbeddedRedis,
    small_bundle_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[DeployedGraph]:
    """The graph on the session's Redis (emptied first), for one test module."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    with deployed_graph(redis_server.url, small_bundle_dir, tmp_path_factory.mktemp("graph-data")) as running:
        yield running
