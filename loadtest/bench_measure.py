"""The benchmark's measurements: the plan, one HTTP target (latency, max rate, batch), the compute floor."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import psutil

from loadtest.floor import FloorRun, make_transactions, run_floor
from loadtest.httpload import LoadResult, ResponseCheck, Target, closed_loop, open_loop
from loadtest.payloads import PayloadFactory, new_run_token, population_from_generator
from loadtest.pipeline import DEFAULT_RULES, InProcessScorer
from loadtest.procstats import ProcessTreeSampler
from serve_app.bundle import ModelBundle
from serve_app.features.online import SyncOnlineFeatureStore
from serve_app.rules import RuleSet

SCORE_PATH = "/v1/score"
BATCH_PATH = "/v1/score/batch"


@dataclass(frozen=True)
class BenchPlan:
    """How long and how far each measurement goes; every loop below is bounded by these numbers."""

    warmup_s: float
    single_s: float
    step_s: float
    start_rate: float
    growth: float  # next rate = rate * growth while steps pass
    max_steps: int
    refine_steps: int  # bisections between the last passing and the first failing rate
    max_rate: float
    batch_s: float
    batch_calls: int  # batch bodies generated ahead (each batch_size transactions)
    batch_size: int = 256
    batch_clients: int = 2
    slo_p99_ms: float = 100.0
    max_error_rate: float = 0.001
    cooldown_s: float = 2.0
    min_rate: float = 2.0  # below this a target is reported as having no rate within the SLO

    @classmethod
    def full(cls, slo_p99_ms: float = 100.0) -> BenchPlan:
        return cls(3.0, 10.0, 8.0, 20.0, 1.4, 18, 2, 5000.0, 15.0, 200, slo_p99_ms=slo_p99_ms)

    @classmethod
    def quick(cls, slo_p99_ms: float = 100.0) -> BenchPlan:
        return cls(1.0, 2.0, 2.0, 20.0, 2.0, 7, 0, 2000.0, 3.0, 30, slo_p99_ms=slo_p99_ms, cooldown_s=1.0)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Meter:
    """CPU and memory of the server's process trees, of this process (the generator) and of the machine."""

    def __init__(self, server_roots: list[int]) -> None:
        self.server_roots = server_roots
        self.me = psutil.Process()

    def __enter__(self) -> Meter:
        self.sampler = ProcessTreeSampler(self.server_roots, 0.5).start() if self.server_roots else None
        self.t0 = time.perf_counter()
        self.me0 = sum(self.me.cpu_times()[:2])
        self.machine0 = psutil.cpu_times()
        self.result: dict[str, Any] = {}
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        machine1 = psutil.cpu_times()
        idle = (machine1.idle + machine1.iowait) - (self.machine0.idle + self.machine0.iowait)
        total = sum(machine1) - sum(self.machine0)
        usage = self.sampler.stop() if self.sampler else None
        self.result = {
            "server_cpu_cores": round(usage.cpu_cores, 3) if usage else None,
            "server_rss_mb": round(usage.rss_mb_max, 1) if usage else None,
            "server_processes": usage.processes if usage else None,
            "server_cores_by_process": usage.cores_by_process if usage else None,
            "generator_cpu_cores": round((sum(self.me.cpu_times()[:2]) - self.me0) / elapsed, 3),
            # Busy cores of the whole machine: well above server + generator means someone else was busy.
            "machine_busy_cores": round((total - idle) / total * (psutil.cpu_count() or 1), 3)
            if total
            else None,
        }


def single_ok(status: int, body: bytes) -> str | None:
    """None for a full score; otherwise what is wrong (a degraded score is an outage of the store)."""
    if status != 200:
        return f"HTTP {status}: {body[:200]!r}"
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "response is not JSON"
    if not isinstance(answer, dict) or "decision" not in answer:
        return "response is not a score"
    return "degraded answer (scored without feature history)" if answer.get("degraded") is not False else None


def batch_ok(size: int) -> ResponseCheck:
    def check(status: int, body: bytes) -> str | None:
        if status != 200:
            return f"HTTP {status}: {body[:200]!r}"
        try:
            results = orjson.loads(body).get("results")
        except (orjson.JSONDecodeError, AttributeError):
            return "response is not a JSON object"
        if not isinstance(results, list) or len(results) != size:
            return f"expected {size} results"
        degraded = sum(1 for r in results if r.get("degraded"))
        return f"{degraded} of {size} answers degraded" if degraded else None

    return check


class PlannedClock:
    """Event times of requests sent at `rate` from `start` (epoch s): timestamps match the send schedule."""

    def __init__(self, start: float, rate: float) -> None:
        self.start, self.rate, self.calls = start, rate, 0

    def __call__(self) -> float:
        self.calls += 1
        return self.start + (self.calls - 1) / self.rate


def _latency(result: LoadResult) -> dict[str, Any]:
    return {
        "requests": result.requests,
        "errors": result.errors,
        "error_rate": round(result.error_rate, 5),
        "first_error": result.first_error,
        "p50_ms": round(result.p(50), 2),
        "p95_ms": round(result.p(95), 2),
        "p99_ms": round(result.p(99), 2),
        "ok_per_s": round(result.ok_rate, 1),
    }


class HttpBench:
    """Everything measured against one HTTP target, in a fixed order."""

    def __init__(
        self, name: str, target: Target, api_key: str, plan: BenchPlan, server_roots: list[int]
    ) -> None:
        self.name, self.target, self.plan, self.server_roots = name, target, plan, server_roots
        self.headers = {"Content-Type": "application/json", "X-API-Key": api_key}
        self.factory = PayloadFactory(
            population_from_generator(), seed=1, stream=0, run_token=new_run_token()
        )

    def _singles(self, count: int, rate: float | None = None, lead_s: float = 0.0) -> list[bytes]:
        if rate is not None:
            self.factory.clock = PlannedClock(time.time() + lead_s, rate)
        try:
            return [
                self.target.request(
                    "POST", SCORE_PATH, orjson.dumps(self.factory.transaction()), self.headers
                )
                for _ in range(count)
            ]
        finally:
            self.factory.clock = time.time

    def _batches(self, count: int) -> list[bytes]:
        size = self.plan.batch_size
        return [
            self.target.request(
                "POST", BATCH_PATH, orjson.dumps({"transactions": self.factory.batch(size)}), self.headers
            )
            for _ in range(count)
        ]

    async def _step(self, rate: float) -> dict[str, Any]:
        plan = self.plan
        n = max(1, math.ceil(rate * plan.step_s))
        requests = self._singles(n, rate, lead_s=0.05 + n * 80e-6)
        # Enough connections to carry the rate at the SLO latency (Little's law), plus slack.
        connections = min(512, math.ceil(rate * plan.slo_p99_ms / 1000.0) + 8)
        with Meter(self.server_roots) as meter:
            result = await open_loop(self.target, requests, rate, single_ok, connections, timeout_s=5.0)
        passed = (
            result.p(99) < plan.slo_p99_ms
            and result.error_rate <= plan.max_error_rate
            and result.ok_rate >= 0.95 * rate
        )
        step = {"rate": round(rate, 1), "connections": connections, **_latency(result), **meter.result}
        step["passed"] = passed
        print(
            f"[{self.name}] {rate:7.0f} req/s: p50 {step['p50_ms']:7.1f} p99 {step['p99_ms']:7.1f} ms, "
            f"errors {result.errors}, server {step['server_cpu_cores']} cores",
            "-> ok" if passed else "-> missed",
            flush=True,
        )
        return step

    async def _search(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """Raise the open-loop rate until a step misses the SLO, then bisect between the last two rates."""
        plan = self.plan
        steps: list[dict[str, Any]] = []
        best: dict[str, Any] | None = None
        failed_at: float | None = None
        rate = plan.start_rate
        while len(steps) < plan.max_steps and rate <= plan.max_rate:
            step = await self._step(rate)
            steps.append(step)
            if not step["passed"]:
                failed_at = rate
                if best is not None or rate / 2 < plan.min_rate:
                    break
                rate /= 2  # even the first rate was too much: look below it
                await _sleep(plan.cooldown_s)
                continue
            best = step
            if failed_at is not None:
                break  # came down from a failure: the bisection below takes it from here
            rate *= plan.growth
            await _sleep(plan.cooldown_s / 2)
        for _ in range(plan.refine_steps):
            if best is None or failed_at is None or failed_at / best["rate"] < 1.08:
                break
            await _sleep(plan.cooldown_s)  # let the queue of the failed step drain
            mid = math.sqrt(best["rate"] * failed_at)
            step = await self._step(mid)
            steps.append(step)
            if step["passed"]:
                best = step
            else:
                failed_at = mid
        return best, steps

    async def run(self) -> dict[str, Any]:
        plan = self.plan
        await closed_loop(self.target, self._singles(int(plan.warmup_s * 300)), 4, plan.warmup_s, single_ok)
        single = await closed_loop(
            self.target, self._singles(int(plan.single_s * 400)), 1, plan.single_s, single_ok
        )
        print(f"[{self.name}] one client: p50 {single.p(50):.1f} ms, p99 {single.p(99):.1f} ms", flush=True)
        best, steps = await self._search()
        await _sleep(plan.cooldown_s)
        bodies = self._batches(plan.batch_calls)
        with Meter(self.server_roots) as meter:
            batch = await closed_loop(
                self.target,
                bodies,
                plan.batch_clients,
                plan.batch_s,
                batch_ok(plan.batch_size),
                timeout_s=30.0,
            )
        tx_per_s = len(batch.latencies_s) * plan.batch_size / batch.duration_s
        print(f"[{self.name}] batch: {tx_per_s:.0f} tx/s, p99 {batch.p(99):.0f} ms per call", flush=True)
        return {
            "url": f"http://{self.target.host}:{self.target.port}",
            "single_client": _latency(single),
            "max_rate": best,
            "steps": steps,
            "batch": {
                "tx_per_s": round(tx_per_s, 1),
                "clients": plan.batch_clients,
                **_latency(batch),
                **meter.result,
            },
        }


async def _sleep(seconds: float) -> None:
    import asyncio  # the event loop is the caller's (uvloop or asyncio)

    await asyncio.sleep(seconds)


def _floor_row(run: FloorRun, meter: Meter) -> dict[str, Any]:
    return {
        "calls": run.calls,
        "tx_per_s": round(run.transactions_per_s, 1),
        "calls_per_s": round(run.calls_per_s, 1),
        "p50_ms": round(run.p50_ms, 2),
        "p99_ms": round(run.p99_ms, 2),
        "scorer_cpu_cores": round(run.cpu_cores, 3),
        "scorer_rss_mb": round(run.rss_mb, 1),
        **meter.result,  # server_* here is Redis
    }


def measure_floor(
    bundle: ModelBundle, redis_url: str, plan: BenchPlan, redis_pids: list[int]
) -> dict[str, Any]:
    """Sequential single-transaction calls, then batches of plan.batch_size, all in this process."""
    scorer = InProcessScorer(bundle, RuleSet.from_yaml(DEFAULT_RULES))
    store = SyncOnlineFeatureStore(redis_url)
    factory = PayloadFactory(population_from_generator(), seed=2, stream=0, run_token=new_run_token())
    try:
        run_floor(scorer, store, [[t] for t in make_transactions(factory, 200)], plan.warmup_s)
        singles = [[t] for t in make_transactions(factory, int(plan.single_s * 1500))]
        with Meter(redis_pids) as single_meter:
            single = run_floor(scorer, store, singles, plan.single_s)
        print(f"[floor] one at a time: {single.calls_per_s:.0f}/s, p99 {single.p99_ms:.1f} ms", flush=True)
        batches = [make_transactions(factory, plan.batch_size) for _ in range(plan.batch_calls)]
        with Meter(redis_pids) as batch_meter:
            batch = run_floor(scorer, store, batches, plan.batch_s)
        print(
            f"[floor] batch: {batch.transactions_per_s:.0f} tx/s, p99 {batch.p99_ms:.0f} ms per call",
            flush=True,
        )
    finally:
        store.close()
    one = _floor_row(single, single_meter)
    return {
        "method": "in-process, one thread, sequential calls (no HTTP, no parsing)",
        "single_client": one,
        # One thread calling back to back: its rate is the most one core of scoring can do.
        "max_rate": {"rate": one["calls_per_s"], **one},
        "batch": _floor_row(batch, batch_meter),
    }
