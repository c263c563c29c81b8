"""Shared fixtures: a real Redis server on a free port, a temporary MLflow store, one Ray per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from serve_app.redis_server import EmbeddedRedis, free_port


def pytest_configure(config: pytest.Config) -> None:
    # Before any test module loads xgboost/sklearn (libgomp reads it once): spinning OpenMP waits made
    # 2-thread XGBoost ~6x slower on a shared 2-core box; passive waits cost nothing when it is idle.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A real redis-server (the binary the product embeds), started once per session on a free port."""
    with EmbeddedRedis(directory=tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """The session server, emptied before each test so tests do not see each other's keys."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A temporary SQLite tracking store with its own artifact root; MLFLOW_TRACKING_URI points at it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("FRAUD_DATA_DIR", str(tmp_path / "data"))
    return uri


@pytest.fixture(scope="session")
def ray_metrics_port() -> int:
    """The port on which the session's Ray serves Prometheus metrics (http://127.0.0.1:<port>/metrics)."""
    return free_port()


@pytest.fixture(scope="session")
def ray_session(ray_metrics_port: int) -> Iterator[None]:
    """One local Ray instance for the whole session: fractional CPUs, no dashboard, no Redis port clash."""
    import ray
    from ray import serve

    os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "0")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=False,
        _metrics_export_port=ray_metrics_port,
    )
    try:
        yield
    finally:
        serve.shutdown()
        ray.shutdown()
