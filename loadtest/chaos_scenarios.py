"""The fault scenarios: each puts load on a running stack, injects one fault on a schedule, and returns
figures (name, value, unit). Every scenario is bounded in time and leaves the stack as it found it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import psutil
import redis

from loadtest.chaos_load import Fault, Outcome, Run, TransactionFactory, open_loop, p99_ms, share, timeline
from loadtest.httpload import Target, closed_loop
from loadtest.procstats import ProcessTreeSampler
from serve_app.redis_server import EmbeddedRedis

Figure = tuple[str, float | str, str]  # (what, value, unit)


@dataclass
class ChaosTarget:
    """What the scenarios may touch. Missing handles make the scenarios that need them skip."""

    base_url: str
    api_key: str
    redis_url: str | None = None
    redis: EmbeddedRedis | None = None  # started by us: may be stopped, killed and restarted
    redis_pid: int | None = None  # someone else's: may only be frozen (SIGSTOP) and thawed
    ray_connected: bool = False  # this process is a Ray driver of the stack's cluster
    memory_roots: list[int] = field(default_factory=list)


class Skip(Exception):  # noqa: N818 - reads as "skip this scenario", not an error
    """The scenario needs a handle this target does not offer."""


def _load(
    target: ChaosTarget,
    rate: float,
    seconds: float,
    *,
    faults: Sequence[Fault] = (),
    retry_once: bool = False,
    connections: int = 64,
    timeout_s: float = 5.0,
) -> Run:
    factory = TransactionFactory(seed=int(time.time()))
    load = open_loop(
        target.base_url,
        target.api_key,
        rate,
        seconds,
        factory.body,
        faults=faults,
        retry_once=retry_once,
        connections=connections,
        timeout_s=timeout_s,
    )
    run = asyncio.run(load)
    if os.environ.get("FRAUD_CHAOS_TIMELINE"):
        print("\n".join(timeline(run)), flush=True)
    return run


def _ok_check(status: int, _body: bytes) -> str | None:
    return None if status == 200 else f"HTTP {status}"


def capacity(target: ChaosTarget, seconds: float, clients: int = 16) -> tuple[float, list[Figure]]:
    """Closed-loop throughput at `clients` connections: the rate the other scenarios are scaled from."""
    factory = TransactionFactory(seed=1)
    http = Target.from_url(target.base_url)
    headers = {"Content-Type": "application/json", "X-API-Key": target.api_key}
    requests = [
        http.request("POST", "/v1/score", factory.body(), headers) for _ in range(int(seconds * 2000))
    ]
    result = asyncio.run(closed_loop(http, requests, clients, seconds, _ok_check))
    rate = result.ok_rate
    return rate, [
        ("throughput at 16 clients (closed loop)", round(rate, 1), "req/s"),
        ("p50 / p99 latency", f"{result.p(50):.0f} / {result.p(99):.0f}", "ms"),
        ("errors", result.errors, "requests"),
    ]


# ---- Redis faults -----------------------------------------------------------------------------------


def _redis_down_actions(target: ChaosTarget) -> tuple[Callable[[], object], Callable[[], object]]:
    if target.redis is not None:
        server = target.redis
        return server.stop, server.start
    if target.redis_pid is not None:
        pid = target.redis_pid
        return (lambda: os.kill(pid, signal.SIGSTOP)), (lambda: os.kill(pid, signal.SIGCONT))
    raise Skip("needs a Redis this run started, or --redis-pid")


def _readiness(target: ChaosTarget) -> int:
    try:
        with urllib.request.urlopen(f"{target.base_url}/readyz", timeout=5) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def _recovery_s(run: Run, since_s: float) -> float:
    """From `since_s` until the last degraded or failed answer after it (0: none after it)."""
    late = [o.intended_s for o in run.outcomes if o.intended_s >= since_s and (o.status != 200 or o.degraded)]
    return max(late) - since_s if late else 0.0


def _fault_figures(window: list[Outcome], whole: Run) -> list[Figure]:
    served = [o for o in window if o.status == 200]
    return [
        ("requests in the fault window", len(window), "requests"),
        ("degraded answers in the window", round(share(served, lambda o: bool(o.degraded)), 1), "% of 200s"),
        ("p99 latency in the window (200s)", round(p99_ms(window), 1), "ms"),
        ("5xx over the whole run", sum(1 for o in whole.outcomes if o.status >= 500), "requests"),
        (
            "no answer (timeout/reset) over the run",
            sum(1 for o in whole.outcomes if o.status == 0),
            "requests",
        ),
    ]


def redis_down(target: ChaosTarget, rate: float, outage_s: float) -> list[Figure]:
    """Redis stopped for `outage_s` under load, then started again."""
    down, up = _redis_down_actions(target)
    ready_during: list[int] = []
    lead, tail = 5.0, 15.0
    faults = [
        Fault(lead, "down", down),
        Fault(lead + outage_s / 2, "probe", lambda: ready_during.append(_readiness(target))),
        Fault(lead + outage_s, "up", up),
    ]
    run = _load(target, rate, lead + outage_s + tail, faults=faults)
    window = run.between(run.marks["down"], run.marks["up"])
    return [
        ("offered rate", round(rate, 1), "req/s"),
        *_fault_figures(window, run),
        ("/readyz while Redis is down", ready_during[0] if ready_during else "n/a", "HTTP status"),
        ("time to recover after Redis is back", round(_recovery_s(run, run.marks["up"]), 2), "s"),
        ("/readyz after the run", _readiness(target), "HTTP status"),
    ]


def redis_slow(target: ChaosTarget, rate: float, slow_s: float, sleep_s: float = 0.1) -> list[Figure]:
    """Redis answering every command late: back-to-back DEBUG SLEEPs keep it busy for `slow_s`."""
    if target.redis_url is None:
        raise Skip("needs --redis-url (or a Redis this run started)")
    url = target.redis_url

    def slow() -> None:
        client = redis.Redis.from_url(url, socket_timeout=5)
        deadline = time.monotonic() + slow_s
        try:
            while time.monotonic() < deadline:
                client.execute_command("DEBUG", "SLEEP", str(sleep_s))
                time.sleep(sleep_s / 4)  # a short gap: Redis is slow, not dead
        finally:
            client.close()

    lead = 3.0
    run = _load(target, rate, lead + slow_s + 5.0, faults=[Fault(lead, "slow", slow)])
    return [
        ("offered rate", round(rate, 1), "req/s"),
        ("Redis blocked per command (DEBUG SLEEP)", round(sleep_s * 1000), "ms"),
        *_fault_figures(run.between(lead, run.marks["slow"]), run),
        ("time to recover after Redis is fast again", round(_recovery_s(run, run.marks["slow"]), 2), "s"),
    ]


# ---- overload and replica failure -------------------------------------------------------------------


def _rss_mb(roots: list[int]) -> float:
    total = 0
    for root in roots:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(root)
            for member in [process, *process.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += member.memory_info().rss
    return total / 2**20


@contextlib.contextmanager
def _memory(target: ChaosTarget) -> Iterator[list[float]]:
    """Yields [rss_before_mb, rss_max_mb] of the stack's processes, filled in when the block ends."""
    figures: list[float] = []
    if not target.memory_roots:
        yield figures
        return
    before = _rss_mb(target.memory_roots)
    sampler = ProcessTreeSampler(target.memory_roots, interval_s=0.5).start()
    try:
        yield figures
    finally:
        usage = sampler.stop()
        figures.extend([before, usage.rss_mb_max])


def overload(target: ChaosTarget, sustainable: float, factor: float, seconds: float) -> list[Figure]:
    """`factor` x the sustainable rate: the service must shed (503/429 + Retry-After), not queue forever."""
    rate = sustainable * factor
    with _memory(target) as memory:
        run = _load(target, rate, seconds, connections=256, timeout_s=10.0)
    shed = [o for o in run.outcomes if o.status in (429, 503)]
    expected = max(1, int(rate * seconds))
    figures: list[Figure] = [
        ("offered rate", round(rate, 1), f"req/s ({factor:g}x sustainable)"),
        ("answered", len(run.outcomes), f"of {expected} sent"),
        ("accepted (200)", round(share(run.outcomes, lambda o: o.status == 200), 1), "%"),
        ("shed with 503/429", round(share(run.outcomes, lambda o: o.status in (429, 503)), 1), "%"),
        (
            "shed answers carrying Retry-After",
            round(share(shed, lambda o: o.retry_after is not None), 1),
            "%",
        ),
        (
            "degraded among accepted (CPU overload must not trip the store breaker)",
            round(share([o for o in run.outcomes if o.status == 200], lambda o: bool(o.degraded)), 1),
            "%",
        ),
        ("p99 latency of accepted requests", round(p99_ms(run.outcomes), 1), "ms, from when due"),
        (
            "  of which the server's own",
            round(p99_ms(run.outcomes, measure="server_ms"), 1),
            "ms, from the actual send",
        ),
        ("  generator lag p99 (sent late)", round(p99_ms(run.outcomes, measure="lag_ms"), 1), "ms"),
        ("other 5xx", sum(1 for o in run.outcomes if o.status >= 500 and o.status != 503), "requests"),
        (
            "no answer within 10 s",
            sum(1 for o in run.outcomes if o.status == 0) + expected - len(run.outcomes),
            "requests",
        ),
    ]
    if memory:
        figures.append(("stack RSS before / max during", f"{memory[0]:.0f} / {memory[1]:.0f}", "MiB"))
    return figures


def replica_kill(target: ChaosTarget, rate: float, seconds: float) -> list[Figure]:
    """ray.kill one replica of every deployment under load; clients retry a failed request once."""
    if not target.ray_connected:
        raise Skip("needs a stack this run started (or --ray-address) to reach the replica actors")
    from loadtest.chaos_stack import kill_replica, replica_actor_names, wait_until_healthy

    killed: list[str] = []
    replaced_after: list[float] = []

    def kill_one_of_each() -> None:
        before = replica_actor_names()
        started = time.monotonic()
        for names in before.values():
            kill_replica(names[0])
            killed.append(names[0])
        # Replaced: every deployment back to its replica count, none of the killed actors among them.
        while time.monotonic() - started < max(90.0, seconds):
            now = replica_actor_names()
            if all(
                len(now.get(d, [])) >= len(n) and not set(now.get(d, [])) & set(killed)
                for d, n in before.items()
            ):
                replaced_after.append(time.monotonic() - started)
                break
            time.sleep(0.25)
        wait_until_healthy(timeout_s=60.0)

    run = _load(target, rate, seconds, retry_once=True, faults=[Fault(5.0, "kill", kill_one_of_each)])
    first_failed = sum(1 for o in run.outcomes if o.first_status != 200)
    expected = max(1, int(rate * seconds))
    failed = sum(1 for o in run.outcomes if o.status != 200) + expected - len(run.outcomes)
    return [
        ("offered rate", round(rate, 1), "req/s"),
        ("replicas killed", ", ".join(sorted(n.split("#")[1] for n in killed)) or "none", ""),
        ("requests", expected, "requests"),
        ("failed at the first attempt", f"{first_failed} ({100 * first_failed / expected:.2f} %)", ""),
        ("failed after one client retry", f"{failed} ({100 * failed / expected:.2f} %)", ""),
        (
            "killed replicas replaced after",
            round(replaced_after[0], 1) if replaced_after else "over bound",
            "s",
        ),
        ("p99 latency over the run (200s)", round(p99_ms(run.outcomes), 1), "ms"),
    ]
