"""End to end on a small generated set: CLI training into a temp MLflow store, registry aliases, the
bundle loaded back through the model store (and its cache), and the pyfunc MLflow users get."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

import train.__main__ as cli
from serve_app.features.contract import FEATURE_NAMES
from serve_app.model_store import ModelStoreError, load_registered_bundle, resolve_alias_version
from serve_app.redis_server import free_port
from train.__main__ import main, parse_args, run
from train.data import load_transactions
from train.generate import GeneratorConfig, generate, write_transactions
from train.pipeline import features_for
from train.registry import CHAMPION, RegisteredVersion, log_and_register

pytestmark = pytest.mark.integration
MODEL = "fraud-scorer"


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = GeneratorConfig(customers=300, merchants=80, days=21, seed=11, fraud_rate_target=0.03)
    path = tmp_path_factory.mktemp("data") / "small.csv"
    write_transactions(generate(config), path)
    return path


def test_train_register_and_load_back(
    small_csv: Path, mlflow_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome, registered = run(parse_args(["--data", str(small_csv), "--experiment", "it-training"]))
    assert (registered.name, registered.version, registered.alias) == (MODEL, "1", CHAMPION)
    assert cli.CHAMPION == CHAMPION  # the CLI repeats the constant to keep --help free of MLflow imports
    assert resolve_alias_version(MODEL, "champion", mlflow_uri) == "1"
    assert resolve_alias_version(MODEL, "challenger", mlflow_uri) is None
    assert resolve_alias_version("no-such-model", "champion", mlflow_uri) is None

    client = MlflowClient(tracking_uri=mlflow_uri)
    run_data = client.get_run(registered.run_id).data
    assert run_data.metrics["holdout_pr_auc"] == pytest.approx(outcome.metrics["holdout_pr_auc"])
    assert "lr_weight" in run_data.params
    assert "xgb_learning_rate" in run_data.params
    logged = {a.path for a in client.list_artifacts(registered.run_id)}
    assert {"pr_curve.png", "features.json", "training_data_summary.json"} <= logged
    version = client.get_model_version(MODEL, "1")
    assert version.run_id == registered.run_id
    assert version.tags["feature_version"] == outcome.bundle.feature_version
    # The experiment's artifacts live under the data dir, not ./mlruns of whatever cwd the test has.
    artifact_root = Path(os.environ["FRAUD_DATA_DIR"]) / "mlartifacts"
    assert any(artifact_root.rglob("bundle.json"))
    assert not [p for p in artifact_root.rglob("*") if p.suffix in (".pkl", ".pickle")]

    x = features_for(load_transactions(small_csv), 2.0)
    cache = tmp_path / "cache"
    served = load_registered_bundle(MODEL, "champion", mlflow_uri, cache)
    assert served.version == "1"
    np.testing.assert_array_equal(served.lr.predict_proba(x), outcome.bundle.lr.predict_proba(x))
    np.testing.assert_array_equal(served.xgb.predict_proba(x), outcome.bundle.xgb.predict_proba(x))
    np.testing.assert_array_equal(served.predict_proba(x), outcome.bundle.predict_proba(x))
    assert served.review_threshold == outcome.bundle.review_threshold
    assert served.decline_threshold == outcome.bundle.decline_threshold

    # A damaged cache entry is replaced by a fresh download of the same version.
    (cache / MODEL / "1" / "bundle.json").write_text("{")
    healed = load_registered_bundle(MODEL, "champion", mlflow_uri, cache)
    np.testing.assert_array_equal(healed.predict_proba(x[:50]), served.predict_proba(x[:50]))

    # MLflow users get the same numbers from the pyfunc (models from code, no pickle). The fixture's
    # MLFLOW_TRACKING_URI must still be in force: registration may not leave the global URI redirected.
    assert mlflow.get_tracking_uri() == mlflow_uri
    pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    scored = pyfunc.predict(pd.DataFrame(x[:200], columns=list(FEATURE_NAMES)))
    np.testing.assert_allclose(scored["fraud_probability"].to_numpy(), outcome.bundle.predict_proba(x[:200]))
    assert set(scored["decision"]) <= {"approve", "review", "decline"}

    # Registry unreachable: the cached champion is still served; with an empty cache it is an error.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    unreachable = f"http://127.0.0.1:{free_port()}"
    cached = load_registered_bundle(MODEL, "champion", unreachable, cache)
    assert cached.version == "1"
    np.testing.assert_array_equal(cached.predict_proba(x[:50]), served.predict_proba(x[:50]))
    with pytest.raises(ModelStoreError, match="no bundle is cached"):
        load_registered_bundle(MODEL, "champion", unreachable, tmp_path / "empty-cache")
    with pytest.raises(ModelStoreError, match="no alias 'canary'"):
        load_registered_bundle(MODEL, "canary", mlflow_uri, cache)

    # A champion exists now: the next version gets no alias unless one is asked for.
    def register(alias: str | None) -> RegisteredVersion:
        return log_and_register(
            outcome.bundle,
            experiment="it-training",
            model_name=MODEL,
            tracking_uri=mlflow_uri,
            params=outcome.params,
            metrics=outcome.metrics,
            alias=alias,
        )

    assert (register(None).version, resolve_alias_version(MODEL, "champion", mlflow_uri)) == ("2", "1")
    third = register("challenger")
    assert (third.version, third.alias) == ("3", "challenger")
    assert resolve_alias_version(MODEL, "champion", mlflow_uri) == "1"
    assert resolve_alias_version(MODEL, "challenger", mlflow_uri) == "3"


def test_cli_reports_bad_input_without_traceback(
    small_csv: Path, tmp_path: Path, mlflow_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "transaction_id,timestamp,customer_id,merchant_id,amount,is_fraud\n"
        "t1,2026-01-01T00:00:00Z,c,m,10,0\n"
        "t2,2026-01-01T00:00:00Z,c,m,-5,1\n"
    )
    assert main(["--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "column 'amount'" in err
    assert "row 2 (line 3)" in err
    assert "Traceback" not in err
    assert main(["--data", str(small_csv), "--train-until", "not-a-date"]) == 2
    assert main(["--data", str(small_csv), "--train-until", "2030-01-01"]) == 2
    err = capsys.readouterr().err
    assert "no holdout rows" in err
    assert "Traceback" not in err
