"""The Ray Tune trainable: one train/fit.py bundle fit per trial on features shared through the object store.

The objective `val_pr_auc` is the validation PR-AUC of what the trial would ship at that moment: while
XGBoost boosts, XGBoost's own `aucpr` on the validation split every `report_every` rounds (free: XGBoost
keeps the validation predictions cached), so ASHA can stop weak trials early; at the end, the calibrated
LR + XGBoost ensemble's average precision (its LR weight may be 0, so it is the better of the two in
practice). Stopped trials therefore never carry an ensemble score; the runner picks the best among the
trials that finished. TrialRunLogger (driver side) records each trial as an MLflow child run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import xgboost as xgb
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.logger import LoggerCallback

from train.evaluate import at_threshold
from train.fit import FitConfig, fit_bundle
from train.pipeline import Splits

FloatArray = npt.NDArray[np.float64]
LabelArray = npt.NDArray[np.int8]
METRIC = "val_pr_auc"
TIME_ATTR = "boosting_round"
FINAL_MARK = "pr_auc_ensemble"  # only the last report of a trial that finished carries this key
# What a trial reports (and its MLflow child run records); Tune adds bookkeeping fields we do not log.
TRIAL_METRICS = (
    METRIC,
    TIME_ATTR,
    FINAL_MARK,
    "pr_auc_lr",
    "pr_auc_xgb",
    "best_iteration",
    "lr_weight",
    "val_decline_recall",
    "val_decline_precision",
)
_XGB_EVAL_NAME = "validation"  # the name train/fit.py gives its evaluation set
_XGB_METRIC = "aucpr"


@dataclass(frozen=True)
class SearchData:
    """Features computed once by the driver; `ray.put` (via tune.with_parameters) shares them zero-copy."""

    x_train: FloatArray
    y_train: LabelArray
    x_val: FloatArray
    y_val: LabelArray


@dataclass(frozen=True)
class TrialSettings:
    """What every trial shares besides its sampled hyper-parameters."""

    nthread: int
    report_every: int
    early_stopping_rounds: int
    seed: int


def search_data(features: FloatArray, labels: npt.ArrayLike, splits: Splits) -> SearchData:
    """The training and validation rows of train.pipeline's time-based split: the same rows the final
    refit uses, so a trial's score is exactly the selected model's validation score. The holdout after
    `splits.train_until` is never shown to a trial; promotion compares models on it."""
    y = np.asarray(labels).astype(np.int8)
    for name, mask in (("training", splits.train), ("validation", splits.validation)):
        frauds = int(y[mask].sum())
        if frauds == 0 or frauds == int(mask.sum()):
            raise ValueError(
                f"the {name} split has {int(mask.sum())} rows and {frauds} frauds; it needs both"
            )
    return SearchData(
        x_train=np.ascontiguousarray(features[splits.train]),
        y_train=y[splits.train],
        x_val=np.ascontiguousarray(features[splits.validation]),
        y_val=y[splits.validation],
    )


class TuneReportCallback(xgb.callback.TrainingCallback):
    """Reports XGBoost's validation PR-AUC to Tune every `every` rounds (ASHA decides at those points)."""

    def __init__(self, every: int) -> None:
        super().__init__()
        self.every = every
        self.last_round = 0

    def after_iteration(self, model: xgb.Booster, epoch: int, evals_log: dict[str, Any]) -> bool:
        self.last_round = epoch + 1
        if self.last_round % self.every == 0:
            score = float(evals_log[_XGB_EVAL_NAME][_XGB_METRIC][-1])
            tune.report({METRIC: score, TIME_ATTR: self.last_round})
        return False  # never asks XGBoost to stop; early stopping and ASHA do that


def trial_fit_config(config: dict[str, Any], settings: TrialSettings) -> FitConfig:
    """The sampled hyper-parameters plus the shared settings, validated by FitConfig."""
    return FitConfig(
        **config,
        nthread=settings.nthread,
        seed=settings.seed,
        xgb_early_stopping_rounds=settings.early_stopping_rounds,
    )


def run_trial(config: dict[str, Any], data: SearchData, settings: TrialSettings) -> None:
    """One trial: fit the bundle with per-round reports, then report the ensemble's validation metrics."""
    reporter = TuneReportCallback(settings.report_every)
    result = fit_bundle(
        data.x_train,
        data.y_train,
        data.x_val,
        data.y_val,
        trial_fit_config(config, settings),
        callbacks=[reporter],
    )
    bundle = result.bundle
    decline = at_threshold(data.y_val, bundle.predict_proba(data.x_val), bundle.decline_threshold)
    tune.report(
        {
            METRIC: result.validation["pr_auc_ensemble"],
            TIME_ATTR: reporter.last_round,
            FINAL_MARK: result.validation["pr_auc_ensemble"],
            "pr_auc_lr": result.validation["pr_auc_lr"],
            "pr_auc_xgb": result.validation["pr_auc_xgb"],
            "best_iteration": result.best_iteration,
            "lr_weight": bundle.lr_weight,
            "val_decline_recall": decline["recall"],
            "val_decline_precision": decline["precision"],
        }
    )


class TrialRunLogger(LoggerCallback):
    """Every trial as an MLflow child run of the search's parent run, written by the driver.

    Like ray.air's MLflowLoggerCallback with `tags={"mlflow.parentRunId": ...}`, but one `log_batch` per
    report with only TRIAL_METRICS: the stock callback writes every result field (timestamps, pid,
    config/...) as its own request, about 0.7 s per report on a 2-core machine with SQLite, and trials
    wait for the driver to take their reports.
    """

    def __init__(
        self, tracking_uri: str, experiment_id: str, parent_run_id: str, tags: dict[str, str]
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.tags = tags
        self._client: MlflowClient | None = None  # made in setup(): Tune may copy callbacks before that
        self._runs: dict[str, str] = {}
        self._finished: set[str] = set()

    def setup(self, *args: Any, **kwargs: Any) -> None:
        self._client = MlflowClient(tracking_uri=self.tracking_uri)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def log_trial_start(self, trial: Trial) -> None:
        if trial.trial_id in self._runs:  # a restarted trial keeps its run
            return
        tags = {**self.tags, "mlflow.parentRunId": self.parent_run_id, "trial_id": trial.trial_id}
        run = self.client.create_run(self.experiment_id, run_name=str(trial), tags=tags)
        self._runs[trial.trial_id] = run.info.run_id
        params = [Param(key, str(value)[:500]) for key, value in sorted(trial.config.items())]
        self.client.log_batch(run.info.run_id, params=params)

    def log_trial_result(self, iteration: int, trial: Trial, result: dict[str, Any]) -> None:
        run_id = self._runs.get(trial.trial_id)
        if run_id is None:
            return
        step = int(result.get(TIME_ATTR) or iteration)
        now_ms = int(time.time() * 1000)
        metrics = [
            Metric(key, float(result[key]), now_ms, step)
            for key in TRIAL_METRICS
            if isinstance(result.get(key), int | float) and math.isfinite(float(result[key]))
        ]
        if FINAL_MARK in result:
            self._finished.add(trial.trial_id)
        self.client.log_batch(run_id, metrics=metrics)

    def log_trial_end(self, trial: Trial, failed: bool = False) -> None:
        run_id = self._runs.get(trial.trial_id)
        if run_id is None:
            return
        outcome = "failed" if failed else "finished" if trial.trial_id in self._finished else "stopped_early"
        self.client.set_tag(run_id, "trial_outcome", outcome)
        self.client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")
