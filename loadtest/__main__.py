"""`python -m loadtest SCENARIO`: a headless Locust run, its CSV + HTML report, and an SLO verdict.

Exit codes: 0 SLO met, 1 SLO missed, 2 bad usage or configuration, 3 Locust itself failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from loadtest.httpload import HttpLoadError, Target
from loadtest.payloads import new_run_token
from loadtest.procstats import ProcessTreeSampler, Usage, server_roots
from loadtest.runenv import (
    ALLOW_DEGRADED_ENV,
    ANSWERS_FILE_ENV,
    API_KEY_ENV,
    RUN_TOKEN_ENV,
    SCENARIO_ENV,
    SEED_ENV,
    api_key,
)
from loadtest.slo import DEFAULT_CONFIG, SCENARIOS, ConfigError, judge, load_config, read_stats_csv

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
STOP_GRACE_S = 15  # after the run time: users finish their request, Locust writes its reports


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__)
    p.add_argument("scenario", choices=SCENARIOS)
    p.add_argument("--users", type=int, help="(peak) concurrent users; default from the config")
    p.add_argument("--duration", type=float, help="seconds; default from the config")
    p.add_argument("--host", default="http://127.0.0.1:8000", help="base URL of the scorer")
    p.add_argument("--api-key", help=f"X-API-Key (default ${API_KEY_ENV} or the first of $FRAUD_API_KEYS)")
    p.add_argument("--out", type=Path, help="report directory (default loadtest/results/<scenario>-<time>)")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="scenarios and SLOs (YAML)")
    p.add_argument("--seed", type=int, default=0, help="payload seed (same seed, same customers and amounts)")
    p.add_argument("--allow-remote", action="store_true", help="permit a host other than localhost")
    p.add_argument(
        "--watch-pid", type=int, action="append", help="server process (tree) to sample; repeatable"
    )
    p.add_argument(
        "--allow-degraded",
        action="store_true",
        help="count degraded answers (store too slow) instead of failing them; reported either way",
    )
    return p.parse_args(argv)


def locust_command(
    scenario: str, users: int, duration_s: float, host: str, out: Path, spawn_rate: float
) -> list[str]:
    """Headless Locust. The shapes read --users as their peak and --run-time as their length."""
    return [
        sys.executable, "-m", "locust",
        "-f", str(LOCUSTFILE),
        "--headless",
        "--host", host,
        "--users", str(users),
        "--spawn-rate", f"{spawn_rate:g}",
        "--run-time", f"{max(1, round(duration_s))}s",
        "--stop-timeout", "5",
        "--csv", str(out / "locust"),
        "--html", str(out / "report.html"),
        "--only-summary",
        "--loglevel", "WARNING",
        "--exit-code-on-error", "0",  # our verdict decides the exit code, not Locust's any-failure rule
    ]  # fmt: skip


def _memory_sampler(host: str, watch: list[int] | None) -> ProcessTreeSampler | None:
    """Sample the server's processes when they are on this machine and can be found."""
    port = urlsplit(host).port or 80
    roots = watch or server_roots(port)
    if not roots:
        print(f"note: no local process listens on port {port}; memory not watched", file=sys.stderr)
        return None
    return ProcessTreeSampler(roots, interval_s=2.0).start()


def _read_answers(path: Path) -> dict[str, Any] | None:
    """The locustfile's tally of scored and degraded answers (absent if Locust died early)."""
    try:
        tally = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return tally if isinstance(tally, dict) else None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        Target.from_url(args.host, allow_remote=args.allow_remote)
        config = load_config(args.config)
        scenario = config.scenario(args.scenario)
        slo = config.slo_for(args.scenario)
    except (HttpLoadError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    users = args.users or scenario.users
    duration = args.duration or scenario.duration_s
    if users < 1 or duration <= 0:
        print("error: --users must be >= 1 and --duration > 0", file=sys.stderr)
        return 2
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = args.out or RESULTS_DIR / f"{args.scenario}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)

    env = dict(os.environ)
    env[SCENARIO_ENV] = args.scenario
    env[SEED_ENV] = str(args.seed)
    env[RUN_TOKEN_ENV] = new_run_token()
    env[ANSWERS_FILE_ENV] = str(out / "answers.json")
    env[ALLOW_DEGRADED_ENV] = "1" if args.allow_degraded else "0"
    if args.api_key:
        env[API_KEY_ENV] = args.api_key
    if not (args.api_key or api_key()):
        print(
            f"warning: no API key (--api-key, ${API_KEY_ENV}, $FRAUD_API_KEYS); expect 401s", file=sys.stderr
        )

    command = locust_command(args.scenario, users, duration, args.host, out, spawn_rate=max(1.0, users / 10))
    print(f"{args.scenario}: {users} users for {duration:g} s against {args.host}; reports in {out}")
    sampler = _memory_sampler(args.host, args.watch_pid)
    started = time.monotonic()
    try:
        proc = subprocess.run(command, env=env, timeout=duration + STOP_GRACE_S + 120, check=False)
    except subprocess.TimeoutExpired:
        print("error: Locust did not stop within its time bound", file=sys.stderr)
        return 3
    finally:
        usage: Usage | None = sampler.stop() if sampler else None
    stats_csv = out / "locust_stats.csv"
    if proc.returncode != 0 or not stats_csv.exists():
        print(f"error: Locust exited with {proc.returncode}; no usable {stats_csv}", file=sys.stderr)
        return 3

    summary = read_stats_csv(stats_csv)
    growth = usage.memory_growth_pct() if usage else None
    verdict = judge(summary, slo, memory_growth_pct=growth)
    print(f"requests {summary.requests}  failures {summary.failures} ({summary.error_rate:.3%})")
    print(f"latency ms  p50 {summary.p50_ms:g}  p95 {summary.p95_ms:g}  p99 {summary.p99_ms:g}")
    print(f"throughput  {summary.rps:.1f} req/s over {time.monotonic() - started:.0f} s")
    tally = _read_answers(out / "answers.json")
    if tally:
        print(
            f"answers     {tally.get('scored', 0)} scored with history, {tally.get('degraded', 0)} degraded"
        )
    if usage:
        growth_text = "n/a" if growth is None else f"{growth:+.1f} %"
        rss = f"RSS mean {usage.rss_mb_mean:.0f} MB, growth {growth_text}"
        print(f"server      {usage.cpu_cores:.2f} cores, {rss}")
    print(f"SLO (p99 < {slo.p99_ms:g} ms, errors <= {slo.max_error_rate:.2%}): ", end="")
    print("PASS" if verdict.passed else "FAIL: " + "; ".join(verdict.violations))
    report = {
        "scenario": args.scenario,
        "users": users,
        "duration_s": duration,
        "host": args.host,
        "summary": {**summary.model_dump(), "error_rate": summary.error_rate},
        "answers": tally,
        "server": None if usage is None else {
            "cpu_cores": usage.cpu_cores, "rss_mb_mean": usage.rss_mb_mean, "memory_growth_pct": growth
        },
        "slo": slo.model_dump(),
        "verdict": verdict.model_dump(),
    }  # fmt: skip
    (out / "verdict.json").write_text(json.dumps(report, indent=2))
    return 0 if verdict.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
