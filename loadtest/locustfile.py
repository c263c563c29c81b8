"""Locust users and load shapes for the scenarios steady, ramp, spike, fraud-burst, batch and soak.

Web UI: `locust -f loadtest/locustfile.py --host http://127.0.0.1:8000`; the scenario is taken from
FRAUD_LOADTEST_SCENARIO (default steady), or picked in the UI with `--class-picker`. Headless runs with an
SLO verdict: `python -m loadtest SCENARIO`. Users and duration scale every shape (peak users, total time).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import orjson
from locust import FastHttpUser, LoadTestShape, User, between, events, task
from locust.env import Environment

from loadtest.payloads import PayloadFactory, Population, fraud_burst, population_from_generator
from loadtest.runenv import (
    ANSWERS_FILE_ENV,
    RUN_TOKEN_ENV,
    SCENARIO_ENV,
    SEED_ENV,
    api_key,
    degraded_is_failure,
    selected_scenario,
)
from loadtest.slo import ScenarioConfig, load_config

SCORE_PATH = "/v1/score"
BATCH_PATH = "/v1/score/batch"

_stream_numbers = itertools.count()
burst_decisions: Counter[str] = Counter()  # decisions on burst transactions, printed when the test stops
answers: Counter[str] = Counter()  # transactions answered "scored" (with history) or "degraded"


@functools.cache
def scenario_config(name: str) -> ScenarioConfig:
    return load_config().scenario(name)


@functools.cache
def population() -> Population:
    return population_from_generator()


@events.init.add_listener
def _build_population_before_the_clock_starts(environment: Environment, **_: Any) -> None:
    population()  # ~2 s of pandas; done at start-up rather than inside the first measured request


@events.test_stop.add_listener
def _report_answers(environment: Environment, **_: Any) -> None:
    total = sum(burst_decisions.values())
    if total:
        flagged = total - burst_decisions.get("approve", 0)
        print(
            f"fraud-burst: {total} burst transactions, {flagged / total:.1%} flagged {dict(burst_decisions)}"
        )
    path = os.environ.get(ANSWERS_FILE_ENV)
    if path:
        tally = {"scored": answers["scored"], "degraded": answers["degraded"], "burst": dict(burst_decisions)}
        Path(path).write_text(json.dumps(tally))


def _tally(resp: Any, degraded: int, total: int) -> None:
    """Count the answers; with degraded answers, fail the request unless the run allows them."""
    answers["degraded"] += degraded
    answers["scored"] += total - degraded
    if degraded and degraded_is_failure():
        # Degraded means the feature store did not answer in time: under load that is an outage.
        resp.failure(f"{degraded} degraded answer(s) (scored without feature history)")


class _ScorerUser(FastHttpUser):
    """Shared set-up: JSON headers with the API key and a payload stream of its own (seeded, numbered)."""

    abstract = True
    network_timeout = 10.0
    connection_timeout = 5.0

    def on_start(self) -> None:
        seed = int(os.environ.get(SEED_ENV, "0"))
        self.payloads = PayloadFactory(
            population(), seed=seed, stream=next(_stream_numbers), run_token=os.environ.get(RUN_TOKEN_ENV)
        )
        self.json_headers = {"Content-Type": "application/json", "X-API-Key": api_key()}

    def post_score(self, body: dict[str, Any], name: str = SCORE_PATH) -> dict[str, Any] | None:
        """One single-transaction request; a non-200 or malformed answer fails (degraded: see _tally)."""
        with self.client.post(
            SCORE_PATH,
            data=orjson.dumps(body),  # type: ignore[arg-type]  # Locust documents bytes; its hint says str
            headers=self.json_headers,
            name=name,
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
                return None
            try:
                answer: dict[str, Any] = orjson.loads(resp.content or b"")
            except orjson.JSONDecodeError:
                resp.failure("response is not JSON")
                return None
            if answer.get("transaction_id") != body["transaction_id"] or "decision" not in answer:
                resp.failure("response does not score the transaction that was sent")
            else:
                _tally(resp, 1 if answer.get("degraded") else 0, 1)
            return answer


class ScoreUser(_ScorerUser):
    """One transaction per request, each user pacing itself to `user_rps` of its scenario."""

    weight = 3  # where it runs beside burst users (fraud-burst), three background users to one burst user

    def wait_time(self) -> float:
        period = 1.0 / scenario_config(selected_scenario()).user_rps
        last = getattr(self, "_last_start", None)
        now = time.monotonic()
        wait = 0.0 if last is None else max(0.0, period - (now - last))
        self._last_start = now + wait
        return wait

    @task
    def score(self) -> None:
        self.post_score(self.payloads.transaction())


class FraudBurstUser(_ScorerUser):
    """Card testing: a few customers make many small online payments within seconds, then a pause."""

    wait_time = between(2.0, 5.0)

    @task
    def burst(self) -> None:
        start = time.monotonic()
        for item in fraud_burst(self.payloads, customers=3, per_customer=10, within_s=8.0):
            # Send each payment when it happens, so its event time matches the wall clock.
            delay = item.at_s - (time.monotonic() - start)
            if delay > 0:
                self._sleep(delay)
            answer = self.post_score(item.body, name=f"{SCORE_PATH} [burst]")
            if answer and "decision" in answer:
                burst_decisions[str(answer["decision"])] += 1

    def _sleep(self, seconds: float) -> None:
        import gevent  # Locust's own event loop; only meaningful inside a Locust run

        gevent.sleep(seconds)


class BatchUser(_ScorerUser):
    """The batch endpoint, `batch_size` transactions per call, back to back (closed loop)."""

    wait_time = between(0.0, 0.0)

    @task
    def score_batch(self) -> None:
        size = scenario_config("batch").batch_size
        body = {"transactions": self.payloads.batch(size)}
        with self.client.post(
            BATCH_PATH,
            data=orjson.dumps(body),  # type: ignore[arg-type]  # Locust documents bytes; its hint says str
            headers=self.json_headers,
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
                return
            try:
                results = orjson.loads(resp.content or b"").get("results", [])
            except (orjson.JSONDecodeError, AttributeError):
                resp.failure("response is not a JSON object")
                return
            if len(results) != size:
                resp.failure(f"{len(results)} results for {size} transactions")
            else:
                _tally(resp, sum(1 for r in results if r.get("degraded")), size)


@dataclass(frozen=True)
class Stage:
    until: float  # fraction of the duration at which this stage ends
    users: float  # fraction of the peak users
    user_classes: tuple[type[User], ...] = (ScoreUser,)
    fast: bool = False  # spawn all at once (a spike) instead of over about ten seconds


class ScenarioShape(LoadTestShape):
    """Stages as fractions of the duration and of the peak users; --users and --run-time scale them."""

    abstract = True
    use_common_options = True
    scenario: ClassVar[str] = "steady"
    stages: ClassVar[tuple[Stage, ...]] = (Stage(1.0, 1.0),)

    def _peak_and_duration(self, scenario: str) -> tuple[int, float]:
        cfg = scenario_config(scenario)
        options = self.runner.environment.parsed_options if self.runner else None
        users = getattr(options, "num_users", None) or cfg.users
        duration = getattr(options, "run_time", None) or cfg.duration_s
        return max(int(users), 1), float(duration)

    def definition(self) -> tuple[str, tuple[Stage, ...]]:
        return self.scenario, self.stages

    def tick(self) -> tuple[int, float, list[type[User]]] | None:
        scenario, stages = self.definition()
        peak, duration = self._peak_and_duration(scenario)
        fraction = self.get_run_time() / duration
        for stage in stages:
            if fraction < stage.until:
                users = max(1, round(peak * stage.users))
                spawn_rate = float(users) if stage.fast else max(1.0, users / 10.0)
                return users, spawn_rate, list(stage.user_classes)
        return None


class SelectedScenario(ScenarioShape):
    """The scenario named by FRAUD_LOADTEST_SCENARIO; first in the file, so Locust uses it by default."""

    def definition(self) -> tuple[str, tuple[Stage, ...]]:
        shape = SHAPES.get(selected_scenario())
        if shape is None:
            raise ValueError(f"{SCENARIO_ENV}={selected_scenario()!r} is not one of {', '.join(SHAPES)}")
        return shape.scenario, shape.stages


class SteadyShape(ScenarioShape):
    scenario = "steady"
    stages = (Stage(1.0, 1.0),)


class RampShape(ScenarioShape):
    scenario = "ramp"
    stages = (Stage(0.25, 0.25), Stage(0.5, 0.5), Stage(0.75, 0.75), Stage(1.0, 1.0))


class SpikeShape(ScenarioShape):
    scenario = "spike"
    stages = (Stage(0.4, 0.25), Stage(0.6, 1.0, fast=True), Stage(1.0, 0.25, fast=True))


class FraudBurstShape(ScenarioShape):
    scenario = "fraud-burst"
    # Users split by weight: three make background traffic for every one that runs bursts.
    stages = (Stage(1.0, 1.0, (ScoreUser, FraudBurstUser)),)


class BatchShape(ScenarioShape):
    scenario = "batch"
    stages = (Stage(1.0, 1.0, (BatchUser,)),)


class SoakShape(ScenarioShape):
    scenario = "soak"
    stages = (Stage(1.0, 1.0),)


SHAPES: dict[str, type[ScenarioShape]] = {
    shape.scenario: shape
    for shape in (SteadyShape, RampShape, SpikeShape, FraudBurstShape, BatchShape, SoakShape)
}
