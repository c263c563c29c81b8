"""Online/offline agreement: a period replayed through the live graph scores like the offline evaluation.

Train a champion on the first weeks of a generated stream (temp MLflow store), warm the real Redis with
those weeks (train.materialize), serve the real graph, replay the following days through the HTTP API with
labels fed back two days late (loadtest.replay's schedule and client), and compare with the same model
scored offline on compute_features over the whole file with the same label delay.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from loadtest.replay_http import ReplayClient
from loadtest.replay_loop import ReplayResult, run_replay
from loadtest.replay_schedule import ReplayStream, prepare_stream
from loadtest.report import build_report
from serve_app.features.contract import DAY_MS
from serve_app.features.offline import compute_features
from serve_app.redis_server import free_port
from train.data import load_transactions
from train.evaluate import pr_auc

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
API_KEY = "agreement-test-key"
MODEL_NAME = "fraud-scorer"
LABEL_DELAY_DAYS = 2.0
TRAIN_UNTIL = "2026-01-25"  # 24 days of training history, then 6 days replayed live
PR_AUC_TOLERANCE = 0.01


@pytest.fixture
def stream_file(tmp_path: Path) -> Path:
    from train.generate import GeneratorConfig, generate, write_transactions

    path = tmp_path / "stream.parquet"
    config = GeneratorConfig(customers=1500, merchants=300, days=30, seed=23, start="2026-01-01")
    write_transactions(generate(config), path)
    return path


@pytest.fixture
def champion(stream_file: Path, mlflow_uri: str) -> str:
    """`python -m train` on the first period, registered as champion in the test's own store."""
    from train.__main__ import main as train_main

    args = ["--data", str(stream_file), "--train-until", TRAIN_UNTIL]
    assert train_main([*args, "--label-delay-days", str(LABEL_DELAY_DAYS)]) == 0
    return mlflow_uri


@pytest.fixture
def graph_url(ray_session: None, redis_url: str, champion: str, tmp_path: Path) -> Iterator[str]:
    """The shipped serve_config.yaml, pointed at this test's Redis, MLflow store and API key.

    Deployed like `serve run` does (serve_app.run.deploy) rather than serve.run(build_app(...)): replicas
    read FRAUD_API_KEYS from their own environment, and only an application config carries a runtime_env.
    """
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    from serve_app.run import deploy

    raw = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text(encoding="utf-8"))
    raw["http_options"]["port"] = free_port()
    (app,) = raw["applications"]
    # A roomy store deadline: this test compares features, and a busy CI machine must not degrade a batch.
    app["args"].update(
        redis_url=redis_url,
        tracking_uri=champion,
        model_cache_dir=str(tmp_path / "model_cache"),
        store_timeout_s=1.0,
    )
    app["runtime_env"] = {
        "env_vars": {
            "FRAUD_API_KEYS": API_KEY,
            "FRAUD_REDIS_URL": redis_url,
            "MLFLOW_TRACKING_URI": champion,
            "FRAUD_DATA_DIR": str(tmp_path / "data"),
        }
    }
    port = deploy(ServeDeploySchema.model_validate(raw))  # a Serve started earlier keeps its own port
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.delete(app["name"])


async def _replay(stream: ReplayStream, url: str, delay_ms: int) -> ReplayResult:
    client = ReplayClient(url, API_KEY, connections=4)
    try:
        # Small batches and two in flight: exercises the conflict-aware scheduling, not just the happy path.
        return await run_replay(
            stream, client, batch_size=500, label_delay_ms=delay_ms, concurrency=2, progress=False
        )
    finally:
        await client.aclose()


def test_live_pr_auc_equals_offline_evaluation_of_the_same_model(
    graph_url: str, redis_url: str, stream_file: Path, champion: str, tmp_path: Path
) -> None:
    from serve_app.model_store import load_registered_bundle
    from train.materialize import materialize

    df = load_transactions(stream_file)
    delay_ms = round(LABEL_DELAY_DAYS * DAY_MS)
    cut = pd.Timestamp(TRAIN_UNTIL, tz="UTC")
    history = (df["timestamp"] < cut).to_numpy()
    warmed = materialize(df[history], redis_url, label_delay_ms=delay_ms, progress=False)
    assert warmed.transactions["new"] == int(history.sum())

    stream = prepare_stream(df, delay_ms, start=cut)
    result = asyncio.run(_replay(stream, graph_url, delay_ms))
    live = build_report(result.scores, stream.frame, elapsed_s=result.elapsed_s)

    bundle = load_registered_bundle(MODEL_NAME, "champion", champion, tmp_path / "offline_cache")
    x = compute_features(df, delay_ms)[~history]
    offline_p = bundle.combine(bundle.lr.predict_proba(x), bundle.xgb.predict_proba(x))
    y = df["is_fraud"].to_numpy()[~history]
    offline_pr_auc = pr_auc(y, offline_p)

    # Same rows in the same order on both sides: (timestamp, transaction_id).
    assert result.scores["transaction_id"].tolist() == df["transaction_id"][~history].tolist()
    live_p = result.scores["fraud_probability"].to_numpy()
    gap = np.abs(live_p - offline_p)
    print(
        f"\nagreement: {len(y)} live transactions ({int(y.sum())} fraud) in {result.elapsed_s:.1f} s "
        f"({live.throughput_tps:.0f}/s); PR-AUC live {live.pr_auc:.4f} offline {offline_pr_auc:.4f}; "
        f"max |p_live - p_offline| {gap.max():.2e}; labels {dict(result.label_statuses)}"
    )
    assert live.degraded_share == 0.0, "some batches were scored without the feature store"
    assert result.label_statuses["unknown"] == 0, "labels were sent for transactions the store never saw"
    assert live.pr_auc is not None
    assert abs(live.pr_auc - offline_pr_auc) <= PR_AUC_TOLERANCE
    # The stronger promise behind it: every live probability is the offline one (up to the 6 decimals
    # the API rounds to). A gap here means training-serving skew even if the PR-AUCs happen to agree.
    assert np.mean(gap > 1e-5) == 0.0, f"{int(np.sum(gap > 1e-5))} rows differ; worst {gap.max():.3g}"
