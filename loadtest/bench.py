"""`python -m loadtest.bench [--quick] --out bench.json`: the Serve app, baseline and floor in one run.

Targets: `serve` (serve_config.yaml as `make run` deploys it: the fused topology), `serve_graph`
(configs/serve_graph.yaml: every stage its own deployment), `baseline` (one FastAPI process doing the same
work) and `floor` (the same work called in-process, no HTTP). Each server runs alone while it is measured
(the others are stopped), against the same Redis, the same bundle and the same load generator
(loadtest.httpload, in this process). Per target: latency at one client, the highest open-loop rate whose
p99 stays under the SLO, and batch-endpoint throughput (256 per call), with CPU and memory of the server's
process tree. Only 127.0.0.1 targets; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis as redis_client

from loadtest.bench_measure import BenchPlan, HttpBench, measure_floor
from loadtest.bench_targets import ServerProcess, TargetStartError, baseline_server, graph_server
from loadtest.httpload import HttpLoadError, Target
from loadtest.payloads import population_from_generator
from loadtest.pipeline import load_serving_bundle
from loadtest.procstats import server_roots
from serve_app.bundle import ModelBundle
from serve_app.redis_server import EmbeddedRedis, free_port

BENCH_KEY = "bench-key"  # a throw-away key for servers this run starts itself
TARGETS = ("serve", "serve_graph", "baseline", "floor")
REPO_ROOT = Path(__file__).resolve().parent.parent
SERVE_CONFIGS = {
    "serve": REPO_ROOT / "serve_config.yaml",
    "serve_graph": REPO_ROOT / "configs" / "serve_graph.yaml",
}


def _run_async(coro: Any) -> Any:
    try:
        import uvloop  # the generator's event loop should cost as little as possible

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def _load_bundle(bundle_dir: Path | None) -> ModelBundle | None:
    try:
        return load_serving_bundle(bundle_dir)
    except Exception as exc:  # no champion yet, a bad directory: say what to do, not a traceback
        print(
            f"error: cannot load the bundle ({type(exc).__name__}: {exc}); run `make train` first "
            "or pass --bundle-dir",
            file=sys.stderr,
        )
        return None


def _measure_server(
    name: str, server: ServerProcess | None, url: str, plan: BenchPlan, api_key: str, ready_s: float
) -> dict[str, Any]:
    """Start (unless already running), measure, stop; a failure to start is reported, not raised."""
    started_here = server is not None
    try:
        if server is not None:
            t0 = time.monotonic()
            server.start(ready_timeout_s=ready_s)
            print(f"[{name}] ready in {time.monotonic() - t0:.0f} s at {url}", flush=True)
        port = urlsplit(url).port or 80
        roots = [server.pid] if server is not None else server_roots(port)
        bench = HttpBench(name, Target.from_url(url), api_key, plan, roots)
        return {"model_version": _served_version(url), **_run_async(bench.run())}
    except (TargetStartError, HttpLoadError) as exc:
        print(f"[{name}] skipped: {exc}", file=sys.stderr, flush=True)
        return {"error": str(exc)}
    finally:
        if started_here and server is not None:
            server.stop()


def _served_version(url: str) -> str | None:
    """The model version the server says it serves (its /readyz), so a reader can see all served one."""
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=5) as resp:  # noqa: S310 - 127.0.0.1 only
            version = json.loads(resp.read()).get("model_version")
    except (OSError, ValueError, AttributeError):
        return None
    return str(version) if version is not None else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _get(result: dict[str, Any], *path: str) -> float | None:
    node: Any = result
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, int | float) else None


def summarize(targets: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    b, f = targets.get("baseline", {}), targets.get("floor", {})
    ratios: dict[str, float | None] = {}
    for name in ("serve", "serve_graph"):
        t = targets.get(name, {})
        ratios[f"{name}_over_baseline_max_rate"] = _ratio(
            _get(t, "max_rate", "rate"), _get(b, "max_rate", "rate")
        )
        ratios[f"{name}_over_baseline_batch"] = _ratio(
            _get(t, "batch", "tx_per_s"), _get(b, "batch", "tx_per_s")
        )
        ratios[f"{name}_batch_over_floor"] = _ratio(
            _get(t, "batch", "tx_per_s"), _get(f, "batch", "tx_per_s")
        )
    ratios["baseline_batch_over_floor"] = _ratio(_get(b, "batch", "tx_per_s"), _get(f, "batch", "tx_per_s"))
    return ratios


def _cell(value: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def table(targets: dict[str, dict[str, Any]], ratios: dict[str, float | None]) -> str:
    names = [n for n in TARGETS if n in targets]
    rows = [
        ("max rate, p99 < SLO (req/s)", ("max_rate", "rate"), "{:.0f}"),
        ("  p50 / p99 at that rate (ms)", None, ""),
        ("one client p50 (ms)", ("single_client", "p50_ms"), "{:.1f}"),
        ("one client p99 (ms)", ("single_client", "p99_ms"), "{:.1f}"),
        ("batch of 256 (tx/s)", ("batch", "tx_per_s"), "{:.0f}"),
        ("batch p99 per call (ms)", ("batch", "p99_ms"), "{:.0f}"),
        ("server CPU at max rate (cores)", ("max_rate", "server_cpu_cores"), "{:.2f}"),
        ("server RSS at max rate (MB)", ("max_rate", "server_rss_mb"), "{:.0f}"),
        ("generator CPU at max rate (cores)", ("max_rate", "generator_cpu_cores"), "{:.2f}"),
    ]
    lines = [f"{'':36}" + "".join(f"{n:>14}" for n in names)]
    for label, path, fmt in rows:
        if path is None:
            cells = [
                f"{_cell(_get(targets[n], 'max_rate', 'p50_ms'), '{:.1f}')} / "
                f"{_cell(_get(targets[n], 'max_rate', 'p99_ms'), '{:.1f}')}"
                for n in names
            ]
        else:
            cells = [_cell(_get(targets[n], *path), fmt) for n in names]
        lines.append(f"{label:36}" + "".join(f"{c:>14}" for c in cells))
    lines.append("")
    lines.extend(f"{k:36}{_cell(v, '{:.2f}x'):>14}" for k, v in ratios.items())
    for name in names:
        for where in ("max_rate", "batch"):
            spent = (targets[name].get(where) or {}).get("server_cores_by_process")
            if spent and len(spent) > 1:
                top = ", ".join(
                    f"{k.removeprefix('ServeReplica:')} {v:.2f}" for k, v in list(spent.items())[:6]
                )
                lines.append(f"{name} cores by process ({where}): {top}")
        best = targets[name].get("max_rate") or {}
        spent = best.get("server_cores_by_process")
        if spent and len(spent) > 1 and best.get("ok_per_s"):
            # CPU milliseconds each process spends per scored request: what every hop costs.
            per_request = {k: v / best["ok_per_s"] * 1000 for k, v in spent.items()}
            top = ", ".join(
                f"{k.removeprefix('ServeReplica:')} {v:.1f}" for k, v in list(per_request.items())[:7]
            )
            lines.append(f"{name} CPU ms per request at max rate: {top}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="a few seconds per step (CI smoke, development)")
    p.add_argument("--out", type=Path, default=Path("bench.json"), help="JSON results")
    p.add_argument(
        "--graph-url", help="measure an already running Serve app (as `serve`) instead of starting one"
    )
    p.add_argument("--redis-url", help="use this Redis instead of starting an embedded one")
    p.add_argument("--bundle-dir", type=Path, help="bundle for baseline and floor (default: the registry's)")
    p.add_argument("--api-key", help="X-API-Key for --graph-url (servers started here get their own)")
    p.add_argument("--only", choices=TARGETS, action="append", help="repeatable; default: all four")
    p.add_argument(
        "--no-dashboard", action="store_true", help="start the Serve apps without the Ray dashboard (memory)"
    )
    p.add_argument("--slo-p99-ms", type=float, default=100.0, help="p99 bound for the max-rate search")
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds a server may take to start")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.graph_url:
        try:
            Target.from_url(args.graph_url)
        except HttpLoadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    plan = BenchPlan.quick(args.slo_p99_ms) if args.quick else BenchPlan.full(args.slo_p99_ms)
    only = set(args.only or TARGETS)
    bundle = _load_bundle(args.bundle_dir) if only & {"floor", "baseline"} else None
    if bundle is None and only & {"floor", "baseline"}:
        return 2
    population_from_generator()  # build once, before anything is timed
    started = datetime.now(UTC).isoformat()
    load_before = os.getloadavg()  # other work on the machine skews every number: recorded with them
    targets: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="fraud-bench-") as tmp:
        work = Path(tmp)
        redis = None if args.redis_url else EmbeddedRedis(directory=work / "redis").start()
        redis_url = args.redis_url or (redis.url if redis else "")

        def fresh_store() -> None:
            # Every target starts from an empty store: each one writes thousands of transactions for the
            # same customers, and longer histories make every later target's Lua calls slower (measured:
            # the Serve app went from 321 to 249 req/s when it ran after the baseline on a shared store).
            # A --redis-url store is the user's: never emptied.
            if redis is not None:
                client = redis_client.Redis.from_url(redis_url)
                client.flushall()
                client.close()

        try:
            if "floor" in only:
                print("[floor] in-process compute floor", flush=True)
                assert bundle is not None
                redis_pids = [redis.process.pid] if redis and redis.process else []
                targets["floor"] = {
                    "model_version": bundle.version,
                    **measure_floor(bundle, redis_url, plan, redis_pids),
                }
            if "baseline" in only:
                fresh_store()
                port = free_port()
                server = baseline_server(port, redis_url, work, BENCH_KEY, args.bundle_dir)
                targets["baseline"] = _measure_server(
                    "baseline", server, server.base_url, plan, BENCH_KEY, args.ready_timeout
                )
            for name, config_path in SERVE_CONFIGS.items():
                if name not in only:
                    continue
                fresh_store()
                if args.graph_url and name == "serve":
                    key = args.api_key or BENCH_KEY
                    targets[name] = _measure_server(name, None, args.graph_url, plan, key, 0)
                    continue
                server = graph_server(
                    free_port(), redis_url, work, BENCH_KEY, config_path, name, not args.no_dashboard
                )
                targets[name] = _measure_server(
                    name, server, server.base_url, plan, BENCH_KEY, args.ready_timeout
                )
                if "error" in targets[name]:
                    targets[name]["log_tail"] = _tail(work / f"{name}.log")
        finally:
            if redis is not None:
                redis.stop()
    ratios = summarize(targets)
    load_after = os.getloadavg()
    result = {
        "started_at": started,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_before": load_before,
            "load_avg_after": load_after,
            "niceness": os.nice(0),  # servers and generator inherit it; negative = favoured over others
        },
        "ray_dashboard": not args.no_dashboard,
        "plan": plan.as_dict(),
        "targets": targets,
        "ratios": ratios,
    }
    args.out.write_text(json.dumps(result, indent=2, default=float))
    print()
    print(table(targets, ratios))
    print(f"\nload average before/after: {load_before} / {load_after}")
    print(f"wrote {args.out}")
    return 0 if all("error" not in t for t in targets.values()) else 1


def _tail(path: Path, lines: int = 20) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


if __name__ == "__main__":
    raise SystemExit(main())
