"""`python -m loadtest.chaos`: fault scenarios against the scoring graph, printed as a table of figures.

Without --url it starts its own stack on 127.0.0.1 (an embedded Redis with the product's persistence, a
local Ray with 2 CPUs, serve_config.yaml deployed with a bundle from --bundle-dir or trained on the spot,
the edge HAProxy in front as `make run` puts it) and can then run every scenario. With --url it attacks a
running stack with the handles it is given:
--redis-url (slow Redis, fsync cost), --redis-pid (Redis frozen instead of stopped), --ray-address
(replica kill). Scenarios whose handle is missing are skipped and say why. Every loop is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from loadtest.chaos_durability import fsync_cost, labels_survive_kill9
from loadtest.chaos_scenarios import (
    ChaosTarget,
    Figure,
    Skip,
    capacity,
    overload,
    redis_down,
    redis_slow,
    replica_kill,
)
from loadtest.procstats import server_roots
from serve_app.edge import Address, Edge, EdgeSettings
from serve_app.redis_server import EmbeddedRedis, free_port
from serve_app.run import EDGE_ENV, FAST_PATH_ENV, NO_EDGE_ENV, choose_side_ports

SCENARIOS = ("capacity", "redis_down", "redis_slow", "overload", "replica_kill", "labels_kill9", "fsync_cost")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.chaos", description=__doc__)
    p.add_argument("--url", help="a running scorer (http://127.0.0.1:PORT); default: start one")
    p.add_argument(
        "--api-key", default=os.environ.get("FRAUD_LOADTEST_API_KEY", ""), help="X-API-Key for --url"
    )
    p.add_argument("--redis-url", help="the running scorer's Redis (with --url)")
    p.add_argument("--redis-pid", type=int, help="the running scorer's redis-server pid (with --url)")
    p.add_argument("--ray-address", help="the running scorer's Ray cluster, for replica kills (with --url)")
    p.add_argument(
        "--bundle-dir", type=Path, help="bundle for the stack this run starts (default: train one)"
    )
    p.add_argument("--no-fast-path", action="store_true", help="own stack: Serve's Python proxy, not HAProxy")
    p.add_argument("--no-edge", action="store_true", help="own stack: clients reach Serve directly")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {SCENARIOS}")
    p.add_argument("--outage-s", type=float, default=30.0, help="how long Redis stays down")
    p.add_argument("--step-s", type=float, default=20.0, help="length of the overload and replica-kill steps")
    p.add_argument("--load-fraction", type=float, default=0.3, help="fault load as a share of capacity")
    p.add_argument("--overload-factor", type=float, default=3.0, help="overload as a multiple of capacity")
    p.add_argument(
        "--repeat", type=int, default=1, help="run each fault scenario N times (figures vary run to run)"
    )
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args(argv)


@contextlib.contextmanager
def own_stack(bundle_dir: Path | None, fast_path: bool, edge: bool = True) -> Iterator[ChaosTarget]:
    """Embedded Redis + local Ray + the graph (+ the edge), all on 127.0.0.1, all stopped on exit."""
    import ray
    from ray import serve

    from loadtest.chaos_stack import deployed_graph, train_small_bundle

    with tempfile.TemporaryDirectory(prefix="fraud-chaos-") as scratch, contextlib.ExitStack() as stack:
        work = Path(scratch)
        if bundle_dir is None:
            print("training a small bundle for the stack (~20 s) ...", flush=True)
            bundle_dir = train_small_bundle(work / "bundle")
        server = EmbeddedRedis(directory=work / "redis").start()
        if fast_path:
            wanted = {**FAST_PATH_ENV, **(EDGE_ENV if edge else NO_EDGE_ENV)}  # as serve_app.run chooses
            os.environ.update({k: os.environ.get(k, v) for k, v in wanted.items()})
            # HAProxy mode's side ports are fixed (stats 8404 and metrics 9101 on all interfaces, the
            # fallback proxy on 8500): with another stack on the machine, HAProxy would fail to start or,
            # worse, fall back to *that* stack's proxy while our Ingress restarts. Free ones, as make run.
            choose_side_ports()
        try:
            # address="local": a fresh cluster of our own (its GCS on a free port), never someone else's.
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
            print("deploying serve_config.yaml ...", flush=True)
            with deployed_graph(server.url, bundle_dir, work / "data") as graph:
                base_url, roots = graph.base_url, server_roots(graph.port)
                if edge:  # what `make run` puts in front (serve_app.run.start_edge)
                    upstream = Address("127.0.0.1", graph.port)
                    front = Edge(EdgeSettings(), Address("127.0.0.1", free_port()), upstream, work / "edge")
                    stack.callback(front.stop)
                    front.start()
                    base_url, roots = f"http://{front.listen}", [*roots, front.pid or 0]
                yield ChaosTarget(
                    base_url=base_url,
                    api_key=graph.api_key,
                    redis_url=server.url,
                    redis=server,
                    ray_connected=True,
                    memory_roots=roots,
                )
        finally:
            with contextlib.suppress(Exception):
                serve.shutdown()
            ray.shutdown()
            server.stop()


@contextlib.contextmanager
def given_stack(args: argparse.Namespace) -> Iterator[ChaosTarget]:
    from urllib.parse import urlsplit

    connected = False
    if args.ray_address:
        import ray

        ray.init(address=args.ray_address, log_to_driver=False)
        connected = True
    try:
        yield ChaosTarget(
            base_url=args.url.rstrip("/"),
            api_key=args.api_key,
            redis_url=args.redis_url,
            redis_pid=args.redis_pid,
            ray_connected=connected,
            memory_roots=server_roots(urlsplit(args.url).port or 80),
        )
    finally:
        if connected:
            import ray

            ray.shutdown()


def run_scenarios(target: ChaosTarget, args: argparse.Namespace, chosen: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    print("measuring capacity ...", flush=True)
    sustainable, figures = capacity(target, seconds=10.0)
    results["capacity"] = figures
    fault_rate = max(5.0, sustainable * args.load_fraction)
    plan: dict[str, Callable[[], list[Figure]]] = {
        "redis_down": lambda: redis_down(target, fault_rate, args.outage_s),
        "redis_slow": lambda: redis_slow(target, fault_rate, slow_s=10.0),
        "overload": lambda: overload(target, sustainable, args.overload_factor, args.step_s),
        "replica_kill": lambda: replica_kill(target, fault_rate, max(args.step_s, 25.0)),
        "labels_kill9": lambda: labels_survive_kill9(target),
        "fsync_cost": lambda: fsync_cost(target, seconds=8.0),
    }
    runs = [(name, n) for n in range(1, args.repeat + 1) for name in chosen if name != "capacity"]
    for name, n in runs:
        key = name if n == 1 else f"{name} #{n}"
        print(f"running {key} ...", flush=True)
        started = time.monotonic()
        try:
            results[key] = plan[name]()
        except Skip as reason:
            results[key] = [("skipped", str(reason), "")]
        except Exception as exc:  # one broken scenario must not cost the figures of the others
            results[key] = [("failed", f"{type(exc).__name__}: {exc}", "")]
        if args.json:
            args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
        print(f"  {key} done in {time.monotonic() - started:.0f} s", flush=True)
        time.sleep(3.0)  # let queues drain and breakers close before the next fault
    return results


def table(results: dict[str, Any]) -> str:
    rows = [
        (scenario, str(what), str(value), str(unit))
        for scenario, figures in results.items()
        for what, value, unit in figures
    ]
    widths = [max(len(r[i]) for r in [("scenario", "figure", "value", "unit"), *rows]) for i in range(4)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format("scenario", "figure", "value", "unit"), line.format(*("-" * w for w in widths))]
    previous = ""
    for scenario, what, value, unit in rows:
        out.append(line.format(scenario if scenario != previous else "", what, value, unit))
        previous = scenario
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        print(f"error: unknown scenarios {unknown}; choose from {SCENARIOS}", file=sys.stderr)
        return 2
    if args.repeat < 1:
        print("error: --repeat must be >= 1", file=sys.stderr)
        return 2
    if args.url and not args.api_key:
        print("error: --url needs --api-key (or FRAUD_LOADTEST_API_KEY)", file=sys.stderr)
        return 2
    stack = (
        given_stack(args)
        if args.url
        else own_stack(args.bundle_dir, fast_path=not args.no_fast_path, edge=not args.no_edge)
    )
    with stack as target:
        results = run_scenarios(target, args, chosen)
    print()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
