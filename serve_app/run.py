"""`make run`: train a champion if none, start Redis and a local Ray, deploy serve_config.yaml, print URLs."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from serve_app.edge import Address, Edge, EdgeError, EdgeSettings
from serve_app.redis_server import EmbeddedRedis, free_port
from serve_app.settings import Settings, get_settings

logger = logging.getLogger("serve_app.run")
REPO_ROOT = Path(__file__).resolve().parents[1]
PREFERRED_REDIS_PORT = 6380  # never 6379: that is Ray's default GCS port
PREFERRED_SERVE_PORT = 8001  # Serve's own HTTP port behind the edge (the edge takes the configured one)
DEPLOY_TIMEOUT_S = 300.0
# Measured (DESIGN.md): HAProxy ingress + throughput mode is worth ~7x on a 2-core machine.
FAST_PATH_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # Ray starts workers at niceness 15 so its own daemons win the CPU; here the Serve replicas are the
    # workload, and at 15 they lose every contended millisecond to any other process on the machine.
    "RAY_worker_niceness": "0",
}
# A replica killed mid-request closes its connections without an answer, and the next requests routed to
# it are refused until HAProxy marks it down. Every route is idempotent, so they may be resent. Serve's
# HAProxy waits a second before any resend (HAProxy's turn-around, min(timeout connect, 1 s), and Ray sets
# whole seconds); behind the edge that second of held slots made the edge shed 1.4-7.9 % of requests
# (python -m loadtest.chaos, replica_kill). So with the edge, Serve's HAProxy answers at once and the edge
# resends (at once: its connection to Serve did not fail, so no turn-around applies); without the edge,
# Serve's HAProxy resends, late but still better than failing. The edge's resends are immediate, so they
# only help once Serve's HAProxy routes away from the dead replica: it marks it down after one refused
# connect instead of Ray's 3. Measured, a request failing with 500 right at the kill: with 3, in about half
# of the chaos timelines' kills and in 2 of 4 kills of an open-loop probe (170 req/s); with 1, in 0 of 4
# probe kills and 1 of 3 chaos kills: fewer, not none. A healthy replica marked down by mistake is back
# after two 250 ms checks.
EDGE_ENV = {"RAY_SERVE_HAPROXY_RETRIES": "0", "RAY_SERVE_HAPROXY_OBSERVE_ERROR_LIMIT": "1"}
NO_EDGE_ENV = {"RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response junk-response"}
# Side ports HAProxy mode binds besides the API port; a second instance on the machine needs other ones.
SIDE_PORTS = {
    "RAY_SERVE_HAPROXY_METRICS_PORT": 9101,
    "RAY_SERVE_HAPROXY_STATS_PORT": 8404,
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": 8500,
    "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": 9500,
}


DEFAULT_HISTORY_FILE = "transactions.parquet"  # what `python -m train` generates on first use


@dataclass
class Running:
    """What this process started and must stop, in reverse order."""

    redis: EmbeddedRedis | None = None
    warming: subprocess.Popen[bytes] | None = None
    ray_started: bool = False
    edge: Edge | None = None


class StopRequested(BaseException):
    """Ctrl-C or SIGTERM. A BaseException, like KeyboardInterrupt, so no `except Exception` swallows it."""


def _request_stop(_signum: int, _frame: FrameType | None) -> None:
    raise StopRequested


def handle_stop_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _request_stop)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m serve_app.run",
        description="Serve the fraud scorer locally: trains a champion if none is registered, starts an "
        "embedded Redis (unless FRAUD_REDIS_URL is set) and a local Ray, deploys serve_config.yaml, and "
        "stops everything on Ctrl-C / SIGTERM.",
    )
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "serve_config.yaml", help="Serve config")
    parser.add_argument("--no-train", action="store_true", help="fail instead of training a missing champion")
    parser.add_argument(
        "--no-warm", action="store_true", help="do not load the default history into an empty embedded store"
    )
    parser.add_argument("--dashboard-port", type=int, default=8265, help="Ray dashboard port on 127.0.0.1")
    parser.add_argument(
        "--no-dashboard",
        action="store_true",
        help="no Ray dashboard (its processes hold ~1 GB on this machine)",
    )
    parser.add_argument("--num-cpus", type=float, default=None, help="CPUs Ray may use (default: all)")
    parser.add_argument(
        "--no-edge",
        action="store_true",
        help="clients reach Serve directly: no HAProxy in front shedding overload (FRAUD_EDGE_ENABLED=0)",
    )
    return parser.parse_args(argv)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As servers bind (HAProxy, uvicorn, Redis): a port left in TIME_WAIT by closed clients is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def champion_registered(settings: Settings, tracking_uri: str) -> bool:
    from mlflow.exceptions import MlflowException  # slow import, only needed here
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(
            settings.model_name, settings.model_alias
        )
    except MlflowException:
        return False
    return True


def ensure_champion(settings: Settings, tracking_uri: str, allow_training: bool) -> None:
    if champion_registered(settings, tracking_uri):
        return
    if not allow_training:
        raise SystemExit(
            f"no model {settings.model_name}@{settings.model_alias} in {tracking_uri}; run `make train`"
        )
    print(
        f"No {settings.model_name}@{settings.model_alias} registered yet: training one (python -m train) ..."
    )
    # A subprocess, so the serving package never imports the training code.
    subprocess.run([sys.executable, "-m", "train"], check=True, cwd=REPO_ROOT, env=os.environ.copy())
    if not champion_registered(settings, tracking_uri):
        raise SystemExit(
            f"`python -m train` finished but registered no {settings.model_name}@{settings.model_alias}"
        )


def start_redis(settings: Settings, running: Running) -> str:
    """FRAUD_REDIS_URL if given, else an embedded server with AOF persistence under the data directory."""
    if settings.redis_url:
        return settings.redis_url
    port = PREFERRED_REDIS_PORT if port_is_free(PREFERRED_REDIS_PORT) else free_port()
    # A generous timeout: after a restart Redis first replays its append-only file (the warmed history).
    running.redis = EmbeddedRedis(directory=settings.data_dir.resolve() / "redis", port=port).start(
        timeout_s=180
    )
    return running.redis.url


def choose_side_ports() -> None:
    """Keep Serve's default side ports when free, else take free ones (unless the operator set them)."""
    for name, default in SIDE_PORTS.items():
        if name not in os.environ:
            os.environ[name] = str(default if port_is_free(default, "0.0.0.0") else free_port())


def warm_marker(running: Running) -> Path | None:
    """Sits beside the embedded store's AOF files, so it lives and dies with the data it describes."""
    return None if running.redis is None else running.redis.directory / "warmed-from-history"


def start_warming(settings: Settings, running: Running, redis_url: str) -> None:
    """Load the default history into the embedded store, so customers (and the README samples) have their
    past. Runs beside Ray's start-up; Redis keeps the result (AOF), so it happens on the first run only.
    An interrupted load is simply run again: every write is idempotent by transaction_id.
    """
    history = settings.data_dir.resolve() / DEFAULT_HISTORY_FILE
    marker = warm_marker(running)
    if marker is None or marker.exists() or not history.is_file():
        return
    print(f"Warming the online store from {history} (python -m train.materialize; first run only) ...")
    running.warming = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "train.materialize",
            "--data",
            str(history),
            "--redis-url",
            redis_url,
            "--quiet",
        ],
        cwd=REPO_ROOT,
    )


def finish_warming(running: Running) -> None:
    if running.warming is None:
        return
    code = running.warming.wait()
    running.warming = None
    marker = warm_marker(running)
    if code == 0 and marker is not None:
        marker.write_text(f"{DEFAULT_HISTORY_FILE}\n", encoding="utf-8")
    elif code != 0:
        print(
            f"warning: warming the store failed (exit {code}); scoring works, with less history", flush=True
        )


def write_key_files(settings: Settings, directory: Path) -> dict[str, str]:
    """API keys, admin keys and the Redis URL in files only this user can read; returns the FRAUD_*_FILE
    variables to pass to the replicas instead of the values."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    variables: dict[str, str] = {}
    for variable, keys in (
        ("FRAUD_API_KEYS_FILE", settings.api_key_list()),
        ("FRAUD_ADMIN_KEYS_FILE", settings.admin_key_list()),
        ("FRAUD_REDIS_URL_FILE", [settings.store_url() or ""]),
    ):
        path = directory / variable.removeprefix("FRAUD_").removesuffix("_FILE").lower()
        path.unlink(missing_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write("\n".join(keys))
        variables[variable] = str(path)
    return variables


def read_config(path: Path) -> Any:
    from ray.serve.schema import ServeDeploySchema  # keeps --help fast

    return ServeDeploySchema.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))


def start_serve(config: Any) -> Any:
    """Serve's controller and proxies with the file's HTTP and logging options (as `serve run` does)."""
    import ray
    from ray.serve._private import api as serve_api  # the CLI's own entry point
    from ray.serve.config import gRPCOptions

    options = {
        "http_options": config.http_options.model_dump(),
        "proxy_location": config.proxy_location,
        "grpc_options": gRPCOptions(**config.grpc_options.model_dump()),
        "global_logging_config": config.logging_config,
    }
    try:
        return serve_api.serve_start(**options)
    except (ray.exceptions.RayActorError, TimeoutError) as exc:
        # On a busy machine the controller may restart a proxy that was slow to become ready, and the
        # first start-up call then fails although Serve is up; the second call finds the controller.
        logger.warning("Serve proxy restarted during start-up (%s); connecting again", type(exc).__name__)
        return serve_api.serve_start(**options)


def wait_until_serving(port: int, deadline: float) -> None:
    """RUNNING means replicas are up; the proxy answering /healthz means clients can reach them."""
    import httpx

    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"Serve reports RUNNING but http://127.0.0.1:{port}/healthz does not answer")


def deploy(config: Any, timeout_s: float = DEPLOY_TIMEOUT_S) -> int:
    """What `serve run serve_config.yaml` does: start Serve with the file's options, deploy its apps, wait
    until they answer. Returns the HTTP port (an already running Serve keeps its own).
    """
    from ray import serve

    deadline = time.monotonic() + timeout_s
    client = start_serve(config)
    client.deploy_apps(config, _blocking=False)
    names = [app.name for app in config.applications]
    while time.monotonic() < deadline:
        statuses = serve.status().applications
        failed = [n for n in names if n in statuses and statuses[n].status in ("DEPLOY_FAILED", "UNHEALTHY")]
        if failed:
            raise SystemExit(f"deploying {failed[0]!r} failed: {statuses[failed[0]].message}")
        if all(n in statuses and statuses[n].status == "RUNNING" for n in names):
            port = int(client.http_config.port)
            wait_until_serving(port, deadline)
            return port
        time.sleep(0.5)
    raise SystemExit(f"{names} not RUNNING after {timeout_s:.0f} s; see the Ray dashboard's Serve logs")


def move_serve_behind_edge(config: Any) -> Address:
    """The edge takes the configured address; Serve's HTTP moves to a private port on 127.0.0.1."""
    public = Address(config.http_options.host, int(config.http_options.port))
    if not port_is_free(public.port, public.host):
        raise SystemExit(f"{public} is in use: another scorer (or another program) listens there")
    private = PREFERRED_SERVE_PORT if port_is_free(PREFERRED_SERVE_PORT) else free_port()
    config.http_options.host, config.http_options.port = "127.0.0.1", private
    return public


def start_edge(public: Address, serve_port: int, directory: Path) -> Edge:
    try:
        return Edge(EdgeSettings(), public, Address("127.0.0.1", serve_port), directory).start()
    except EdgeError as exc:
        raise SystemExit(f"the edge (HAProxy in front of Serve) did not start: {exc}") from None


def banner(
    base: str, edge: Edge | None, dashboard_url: str, tracking_uri: str, generated_key: str | None
) -> str:
    key = generated_key or "<one of your FRAUD_API_KEYS>"
    lines = [
        "",
        "Fraud scorer is up.",
        f"  API            {base}/v1/score   (also /v1/score/batch, /v1/feedback, /healthz, /readyz)",
        f"  OpenAPI docs   {base}/docs",
    ]
    if edge is not None:
        limits = edge.settings
        lines.append(
            f"  Edge           at most {limits.max_in_flight} requests in Serve at once, {limits.max_queue} "
            f"waiting ({limits.burst_queue} through a short stall) up to {limits.queue_timeout_ms} ms, "
            f"the rest 503 (FRAUD_EDGE_*); Serve itself on http://{edge.upstream}"
        )
    lines += [
        f"  Ray dashboard  {dashboard_url}",
        f"  MLflow UI      {sys.executable} -m mlflow ui --backend-store-uri {tracking_uri} --port 5000",
    ]
    if generated_key:
        lines += [
            "",
            f"Development API key (shown once; set FRAUD_API_KEYS to choose your own): {generated_key}",
        ]
    lines += [
        "",
        "Try it:",
        f"  curl -s {base}/v1/score -H 'Content-Type: application/json' -H 'X-API-Key: {key}' \\",
        f"       -d @{REPO_ROOT / 'configs' / 'samples' / 'night_new_merchant.json'}",
        "",
        "Ctrl-C stops Serve, Ray and Redis.",
    ]
    return "\n".join(lines)


def shutdown(running: Running) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # finish cleaning up; a second Ctrl-C still interrupts
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if running.warming is not None:
        running.warming.terminate()
        running.warming.wait()
    if running.edge is not None:
        running.edge.stop()
    if running.ray_started:
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    if running.redis is not None:
        running.redis.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per readiness poll is noise
    settings = get_settings()
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    tracking_uri = settings.tracking_uri
    # Children (training, Ray workers) inherit these; resolved so a worker's cwd does not matter.
    os.environ["FRAUD_DATA_DIR"] = str(data_dir)
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    config = read_config(args.config)
    # The edge sheds overload in C before it costs a replica any CPU (README, "Overload"); without it,
    # clients reach Serve's own HAProxy, and every request, refused or not, is parsed by a Python replica.
    public = move_serve_behind_edge(config) if EdgeSettings().enabled and not args.no_edge else None
    running = Running()
    handle_stop_signals()
    try:
        ensure_champion(settings, tracking_uri, allow_training=not args.no_train)
        os.environ["FRAUD_REDIS_URL"] = start_redis(settings, running)
        if not args.no_warm:
            start_warming(settings, running, os.environ["FRAUD_REDIS_URL"])
        generated_key = None
        if not settings.api_key_list():
            generated_key = secrets.token_urlsafe(24)
            os.environ["FRAUD_API_KEYS"] = generated_key
        for name, value in {**FAST_PATH_ENV, **(NO_EDGE_ENV if public is None else EDGE_ENV)}.items():
            os.environ.setdefault(name, value)
        choose_side_ports()

        import ray  # after the environment above is final

        worker_env = {name: os.environ[name] for name in ("MLFLOW_TRACKING_URI", "FRAUD_DATA_DIR")}
        # Ray logs a runtime_env verbatim (runtime_env_agent.log) and shows it in the dashboard, so the keys
        # and the Redis URL (which may carry a password) travel as paths to owner-only files, never as values.
        worker_env.update(write_key_files(get_settings(), data_dir / "secrets"))
        context = ray.init(
            address="local",  # always a fresh local cluster; its GCS takes a free port, never 6379
            num_cpus=args.num_cpus,
            include_dashboard=not args.no_dashboard,
            dashboard_host="127.0.0.1",
            dashboard_port=args.dashboard_port,
            runtime_env={"env_vars": worker_env},
            log_to_driver=False,
        )
        running.ray_started = True
        handle_stop_signals()  # again: ray.init installs its own SIGTERM handler
        port = deploy(config)
        if public is not None:
            running.edge = start_edge(public, port, data_dir / "edge")
        finish_warming(running)
        dashboard = context.dashboard_url or f"127.0.0.1:{args.dashboard_port}"
        dashboard_url = "off (--no-dashboard)" if args.no_dashboard else f"http://{dashboard}"
        base = f"http://{public}" if public is not None else f"http://{config.http_options.host}:{port}"
        print(banner(base, running.edge, dashboard_url, tracking_uri, generated_key), flush=True)
        while True:
            time.sleep(3600)
    except StopRequested:
        print("\nStopping Serve, Ray and Redis ...", flush=True)
    finally:
        shutdown(running)
    return 0


if __name__ == "__main__":
    sys.exit(main())
