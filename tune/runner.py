"""Run one search: Tuner with ASHA and a search algorithm, MLflow parent + child runs, refit, challenger.

MLflow layout (one experiment, `experiment_name`): a parent run per search holding the job config,
search space, best config and trial table; every trial is a child run (written on the driver by
trainable.TrialRunLogger, with `mlflow.parentRunId` set explicitly because trials run in other
processes); the refit of the best config and the promotion comparison are children too. The tag
`fraud.role` (search | trial | refit | promotion) tells them apart.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import ray
from mlflow import MlflowClient
from ray import tune
from ray.tune.result_grid import ResultGrid
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, SearchAlgorithm, Searcher

from train.fit import FitConfig
from train.pipeline import Splits, features_for, split_by_time, to_utc, train_and_evaluate
from train.registry import RegisteredVersion, ensure_experiment, log_and_register
from tune.promote import CHALLENGER, ROLE_TAG, PromotionOutcome, run_promotion
from tune.space import ResourcePlan, TuneJobConfig, default_point, param_space, plan_resources
from tune.trainable import (
    FINAL_MARK,
    METRIC,
    TIME_ATTR,
    FloatArray,
    SearchData,
    TrialRunLogger,
    TrialSettings,
    run_trial,
    search_data,
)


class SearchError(RuntimeError):
    """The search could not produce a challenger (no trial finished, a missing optional package, ...)."""


@dataclass(frozen=True)
class PreparedData:
    """The transactions, their features (computed once) and train.pipeline's time-based split."""

    df: pd.DataFrame
    features: FloatArray
    splits: Splits
    label_delay_days: float


@dataclass(frozen=True)
class TrialSummary:
    trials: int
    finished: int
    stopped_early: int
    errored: int
    best_config: dict[str, Any]
    best_metrics: dict[str, Any]
    baseline_val_pr_auc: float | None


@dataclass(frozen=True)
class SearchOutcome:
    parent_run_id: str
    plan: ResourcePlan
    summary: TrialSummary
    challenger: RegisteredVersion
    challenger_metrics: dict[str, float]
    promotion: PromotionOutcome | None
    search_seconds: float
    total_seconds: float


def prepare_data(df: pd.DataFrame, job: TuneJobConfig, label_delay_days: float) -> PreparedData:
    """Features over the whole file (history before the window counts), split like `python -m train`."""
    features = features_for(df, label_delay_days)
    splits = split_by_time(
        df["timestamp"],
        to_utc(job.train_from) if job.train_from else None,
        to_utc(job.train_until) if job.train_until else None,
    )
    return PreparedData(df=df, features=features, splits=splits, label_delay_days=label_delay_days)


def build_search_alg(job: TuneJobConfig, plan: ResourcePlan) -> SearchAlgorithm | Searcher:
    """random/grid: Tune's own generator; optuna/hyperopt: imported only when asked for."""
    name, seed = job.search_alg.name, job.search_alg.seed
    start = default_point(job.spaces) if job.search_alg.start_from_defaults and name != "grid" else {}
    points = [start] if start else None
    if name in ("random", "grid"):
        return BasicVariantGenerator(points_to_evaluate=points, random_state=seed)
    if importlib.util.find_spec(name) is None:
        raise SearchError(f"search_alg.name {name!r} needs the {name} package: .venv/bin/pip install {name}")
    searcher: Searcher
    if name == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(points_to_evaluate=points, seed=seed)
    else:
        from ray.tune.search.hyperopt import HyperOptSearch

        searcher = HyperOptSearch(points_to_evaluate=points, random_state_seed=seed)
    # Model-based searchers suggest better points when they have seen more finished trials.
    return ConcurrencyLimiter(searcher, max_concurrent=plan.max_concurrent)


def build_scheduler(job: TuneJobConfig) -> TrialScheduler:
    if job.scheduler.name == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr=TIME_ATTR,
        max_t=job.scheduler.max_t,
        grace_period=job.scheduler.grace_period,
        reduction_factor=job.scheduler.reduction_factor,
        # max_t only places the rungs. Stopping a trial there would kill it one report before its final,
        # ensemble-scored report (n_estimators often equals max_t); trials end by themselves anyway.
        stop_last_trials=False,
    )


def summarise_trials(results: ResultGrid, baseline: dict[str, Any]) -> TrialSummary:
    """Best finished trial by the ensemble's validation PR-AUC; stopped trials never carry that score."""
    every = [results[i] for i in range(len(results))]
    errored = len([r for r in every if r.error is not None])
    finished = [
        (r.config or {}, r.metrics or {})
        for r in every
        if r.error is None and FINAL_MARK in (r.metrics or {})
    ]
    if not finished:
        raise SearchError(f"no trial finished ({len(every)} trials, {errored} failed); see the Ray logs")
    best_config, best_metrics = max(finished, key=lambda pair: float(pair[1][METRIC]))
    baseline_scores = [
        float(metrics[METRIC])
        for config, metrics in finished
        if baseline and all(config.get(k) == v for k, v in baseline.items())
    ]
    return TrialSummary(
        trials=len(every),
        finished=len(finished),
        stopped_early=len(every) - len(finished) - errored,
        errored=errored,
        best_config=dict(best_config),
        best_metrics={k: v for k, v in best_metrics.items() if isinstance(v, int | float)},
        baseline_val_pr_auc=baseline_scores[0] if baseline_scores else None,
    )


def _fit_tuner(
    job: TuneJobConfig,
    data: SearchData,
    plan: ResourcePlan,
    parent_run_id: str,
    tracking_uri: str,
    storage: Path,
) -> ResultGrid:
    settings = TrialSettings(
        nthread=plan.nthread,
        report_every=job.report_every,
        early_stopping_rounds=job.early_stopping_rounds,
        seed=job.seed,
    )
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, data=data, settings=settings), {"cpu": plan.cpus_per_trial}
    )
    mlflow_callback = TrialRunLogger(
        tracking_uri, ensure_experiment(job.experiment_name, tracking_uri), parent_run_id, {ROLE_TAG: "trial"}
    )
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(job.spaces),
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            scheduler=build_scheduler(job),
            search_alg=build_search_alg(job, plan),
            # A grid is enumerated once; num_samples would repeat the whole grid.
            num_samples=1 if job.search_alg.name == "grid" else job.num_samples,
            max_concurrent_trials=plan.max_concurrent,
            time_budget_s=job.time_budget_s,
            # Trials share resources and data, so one actor runs trial after trial (no start-up each time).
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"{job.experiment_name}-{datetime.now(UTC):%Y%m%dT%H%M%S}",
            storage_path=str(storage.resolve()),
            callbacks=[mlflow_callback],
            verbose=1,
        ),
    )
    return tuner.fit()


def _log_search_artifacts(client: MlflowClient, run_id: str, job: TuneJobConfig, plan: ResourcePlan) -> None:
    client.log_dict(run_id, job.model_dump(mode="json"), "tune_config.yaml")
    space = {name: spec.model_dump() for name, spec in job.spaces.by_yaml_name().items()}
    client.log_dict(run_id, space, "search_space.json")
    params = {
        "num_samples": job.num_samples,
        "search_alg": job.search_alg.name,
        "scheduler": job.scheduler.name,
        "grace_period": job.scheduler.grace_period,
        "reduction_factor": job.scheduler.reduction_factor,
        "max_t": job.scheduler.max_t,
        "cpus_per_trial": plan.cpus_per_trial,
        "max_concurrent": plan.max_concurrent,
        "nthread": plan.nthread,
        "report_every": job.report_every,
        "early_stopping_rounds": job.early_stopping_rounds,
    }
    for key, value in params.items():
        client.log_param(run_id, key, value)


def _refit_best(
    prepared: PreparedData,
    job: TuneJobConfig,
    best_config: dict[str, Any],
    parent_run_id: str,
    tracking_uri: str,
    model_name: str,
    data_file: str,
) -> tuple[RegisteredVersion, dict[str, float]]:
    """The best config through train.pipeline exactly as `python -m train` would fit it, as challenger."""
    config = FitConfig(
        **best_config,
        nthread=max(1, len(os.sched_getaffinity(0))),  # the trials are over; the driver's node is free
        seed=job.seed,
        xgb_early_stopping_rounds=job.early_stopping_rounds,
    )
    outcome = train_and_evaluate(
        prepared.df, prepared.features, prepared.splits, config, prepared.label_delay_days
    )
    registered = log_and_register(
        outcome.bundle,
        experiment=job.experiment_name,
        model_name=model_name,
        tracking_uri=tracking_uri,
        params={**outcome.params, "data_file": data_file, "search_parent_run_id": parent_run_id},
        metrics=outcome.metrics,
        figure=outcome.figure,
        data_summary=outcome.data_summary,
        alias=CHALLENGER,
        run_name="refit-best",
        tags={"mlflow.parentRunId": parent_run_id, ROLE_TAG: "refit"},
    )
    return registered, outcome.metrics


def _log_search_metrics(client: MlflowClient, run_id: str, summary: TrialSummary, seconds: float) -> None:
    metrics = {
        "best_val_pr_auc": float(summary.best_metrics[METRIC]),
        "trials_finished": summary.finished,
        "trials_stopped_early": summary.stopped_early,
        "trials_failed": summary.errored,
        "search_seconds": seconds,
    }
    if summary.baseline_val_pr_auc is not None:
        metrics["baseline_val_pr_auc"] = summary.baseline_val_pr_auc
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value))


def run_search(
    job: TuneJobConfig,
    df: pd.DataFrame,
    *,
    tracking_uri: str,
    model_name: str,
    storage: Path,
    label_delay_days: float,
    data_file: str,
    promote: bool,
) -> SearchOutcome:
    """The whole job on an initialised Ray: search, refit the best as challenger, maybe promote it."""
    if not ray.is_initialized():
        raise SearchError("Ray is not initialised; call ray.init(...) first (python -m tune does)")
    started = time.perf_counter()
    prepared = prepare_data(df, job, label_delay_days)
    data = search_data(prepared.features, df["is_fraud"].to_numpy(), prepared.splits)
    # Free CPUs, not the total: a shared Ray (Serve replicas in the test session, other jobs on a
    # cluster) may hold some, and trials sized to CPUs that never free up would wait forever.
    free_cpus = float(ray.available_resources().get("CPU", 0.0))
    if free_cpus < 0.01:
        raise SearchError("the Ray cluster has no free CPU for trials (all reserved by other work)")
    plan = plan_resources(job, free_cpus)
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = ensure_experiment(job.experiment_name, tracking_uri)
    parent = client.create_run(
        experiment_id, run_name=f"search-{datetime.now(UTC):%Y%m%dT%H%M%S}", tags={ROLE_TAG: "search"}
    )
    parent_id = parent.info.run_id
    try:
        _log_search_artifacts(client, parent_id, job, plan)
        client.log_dict(parent_id, prepared.splits.describe(), "splits.json")
        search_started = time.perf_counter()
        results = _fit_tuner(job, data, plan, parent_id, tracking_uri, storage)
        search_seconds = time.perf_counter() - search_started
        summary = summarise_trials(
            results, default_point(job.spaces) if job.search_alg.start_from_defaults else {}
        )
        client.log_dict(parent_id, summary.best_config, "best_config.json")
        client.log_text(parent_id, results.get_dataframe().to_csv(index=False), "trials.csv")
        _log_search_metrics(client, parent_id, summary, search_seconds)
        challenger, challenger_metrics = _refit_best(
            prepared, job, summary.best_config, parent_id, tracking_uri, model_name, data_file
        )
        client.set_tag(parent_id, "challenger_version", challenger.version)
        if math.isfinite(challenger_metrics.get("holdout_pr_auc", math.nan)):
            client.log_metric(parent_id, "challenger_holdout_pr_auc", challenger_metrics["holdout_pr_auc"])
        promotion = None
        if promote:
            promotion = run_promotion(
                df=df,
                features=prepared.features,
                model_name=model_name,
                tracking_uri=tracking_uri,
                margin=job.promotion.margin,
                holdout_days=job.promotion.holdout_days,
                experiment=job.experiment_name,
                parent_run_id=parent_id,
            )
        if promotion is not None:
            client.set_tag(parent_id, "promoted", str(promotion.decision.promote).lower())
    except BaseException:
        client.set_terminated(parent_id, status="FAILED")
        raise
    client.set_terminated(parent_id, status="FINISHED")
    return SearchOutcome(
        parent_run_id=parent_id,
        plan=plan,
        summary=summary,
        challenger=challenger,
        challenger_metrics=challenger_metrics,
        promotion=promotion,
        search_seconds=search_seconds,
        total_seconds=time.perf_counter() - started,
    )
