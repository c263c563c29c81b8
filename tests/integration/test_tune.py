"""A real 4-trial Ray Tune search into a temporary MLflow store, then promotion both ways."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from serve_app.features.contract import FEATURE_NAMES
from serve_app.model_store import resolve_alias_version
from train.data import load_transactions
from train.fit import FitConfig
from train.generate import GeneratorConfig, generate, write_transactions
from train.pipeline import train_and_evaluate
from train.registry import RegisteredVersion, log_and_register
from tune.promote import CHALLENGER, ROLE_TAG, run_promotion
from tune.runner import PreparedData, prepare_data, run_search
from tune.space import parse_config
from tune.trainable import METRIC, TIME_ATTR

pytestmark = pytest.mark.integration

MODEL = "fraud-scorer-test"
LABEL_DELAY_DAYS = 2.0
JOB = {
    "experiment_name": "tune-test",
    "num_samples": 4,
    "report_every": 5,
    "early_stopping_rounds": 10,
    "scheduler": {"grace_period": 10, "reduction_factor": 2, "max_t": 80},
    "spaces": {
        "xgboost": {
            "max_depth": {"type": "int", "low": 3, "high": 5},
            "learning_rate": {"type": "float", "low": 0.1, "high": 0.3, "log": True},
            "n_estimators": 80,
        },
        "lr": {"C": {"type": "float", "low": 0.1, "high": 10.0, "log": True}},
    },
}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tune-data") / "transactions.parquet"
    write_transactions(generate(GeneratorConfig(customers=600, merchants=100, days=28, seed=11)), path)
    return path


def _register_crippled(prepared: PreparedData, tracking_uri: str, alias: str) -> RegisteredVersion:
    """An honestly bad model: three stumps and an LR that only ever saw one feature (the amount)."""
    one_feature = np.zeros_like(prepared.features)
    amount = FEATURE_NAMES.index("amount")
    one_feature[:, amount] = prepared.features[:, amount]
    config = FitConfig(xgb_max_rounds=3, xgb_max_depth=1, nthread=2)
    outcome = train_and_evaluate(prepared.df, one_feature, prepared.splits, config, LABEL_DELAY_DAYS)
    return log_and_register(
        outcome.bundle,
        experiment="tune-test-seed",
        model_name=MODEL,
        tracking_uri=tracking_uri,
        params={"crippled": True},
        metrics=outcome.metrics,
        alias=alias,
    )


def test_search_logs_parent_and_children_registers_challenger_and_promotes_only_a_better_model(
    data_file: Path, mlflow_uri: str, ray_session: None, tmp_path: Path
) -> None:
    job = parse_config(JOB)
    df = load_transactions(data_file)
    prepared = prepare_data(df, job, LABEL_DELAY_DAYS)
    crippled_champion = _register_crippled(prepared, mlflow_uri, alias="champion")

    outcome = run_search(
        job,
        df,
        tracking_uri=mlflow_uri,
        model_name=MODEL,
        storage=tmp_path / "ray_results",
        label_delay_days=LABEL_DELAY_DAYS,
        data_file=str(data_file),
        promote=True,
    )

    # One parent run, four trial runs under it, each with its sampled params and per-round metrics.
    client = MlflowClient(tracking_uri=mlflow_uri)
    experiment = client.get_experiment_by_name("tune-test")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get(ROLE_TAG) == "search"]
    assert [p.info.run_id for p in parents] == [outcome.parent_run_id]
    trials = [r for r in runs if r.data.tags.get(ROLE_TAG) == "trial"]
    assert len(trials) == 4
    rounds_seen = []
    for trial in trials:
        assert trial.data.tags["mlflow.parentRunId"] == outcome.parent_run_id
        assert {"xgb_max_depth", "xgb_learning_rate", "lr_c", "xgb_max_rounds"} <= set(trial.data.params)
        assert 3 <= int(trial.data.params["xgb_max_depth"]) <= 5
        history = client.get_metric_history(trial.info.run_id, METRIC)
        rounds = [m.step for m in history]
        assert rounds, "every trial reports at least once"
        assert all(0.0 <= m.value <= 1.0 for m in history)
        rounds_seen.append(rounds)
        if trial.data.tags["trial_outcome"] == "finished":
            assert "pr_auc_ensemble" in trial.data.metrics
            assert "val_decline_recall" in trial.data.metrics
    assert max(len(r) for r in rounds_seen) >= 2, "per-round reports, not one number per trial"
    assert all(step % 5 == 0 for r in rounds_seen for step in r[:-1])  # every report_every rounds
    assert outcome.summary.finished + outcome.summary.stopped_early == 4

    parent_artifacts = {a.path for a in client.list_artifacts(outcome.parent_run_id)}
    assert {"search_space.json", "best_config.json", "tune_config.yaml", "trials.csv"} <= parent_artifacts
    best = client.get_run(outcome.parent_run_id).data.metrics["best_val_pr_auc"]
    finished_scores = [t.data.metrics[METRIC] for t in trials if t.data.tags["trial_outcome"] == "finished"]
    assert best == pytest.approx(max(finished_scores))
    refits = [r for r in runs if r.data.tags.get(ROLE_TAG) == "refit"]
    assert [r.info.run_id for r in refits] == [outcome.challenger.run_id]
    assert TIME_ATTR in trials[0].data.metrics

    # The refit is the challenger, and it beat the crippled champion on the holdout.
    assert resolve_alias_version(MODEL, CHALLENGER, mlflow_uri) == outcome.challenger.version
    promotion = outcome.promotion
    assert promotion is not None
    assert promotion.champion is not None
    assert promotion.champion.version == crippled_champion.version
    assert promotion.challenger.pr_auc > promotion.champion.pr_auc + job.promotion.margin
    assert promotion.decision.promote, promotion.decision.reason
    assert resolve_alias_version(MODEL, "champion", mlflow_uri) == outcome.challenger.version
    comparison = client.get_run(promotion.run_id).data
    assert comparison.tags["mlflow.parentRunId"] == outcome.parent_run_id
    assert {
        "challenger_pr_auc",
        "champion_pr_auc",
        "challenger_decline_recall",
        "champion_decline_recall",
    } <= set(comparison.metrics)

    # Now the other way round: a crippled challenger against the good champion changes nothing.
    good_champion = outcome.challenger.version
    crippled_challenger = _register_crippled(prepared, mlflow_uri, alias=CHALLENGER)
    refused = run_promotion(
        df=df,
        features=prepared.features,
        model_name=MODEL,
        tracking_uri=mlflow_uri,
        margin=job.promotion.margin,
        holdout_days=None,
    )
    assert refused.challenger.version == crippled_challenger.version
    assert not refused.decision.promote
    assert "below the margin" in refused.decision.reason
    assert resolve_alias_version(MODEL, "champion", mlflow_uri) == good_champion
    assert resolve_alias_version(MODEL, CHALLENGER, mlflow_uri) == crippled_challenger.version
    assert client.get_run(refused.run_id).data.tags["decision"] == "kept"
