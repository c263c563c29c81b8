"""The stack the fault scenarios (and the reliability tests) run against: the real graph from
serve_config.yaml on a Redis of the caller's choosing, plus the probes that look inside it (replica actors,
log files, listening sockets)."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from serve_app.redis_server import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVE_CONFIG = REPO_ROOT / "serve_config.yaml"  # the fused topology, what `make run` deploys
GRAPH_CONFIG = REPO_ROOT / "configs" / "serve_graph.yaml"  # the graph topology, for clusters
APP_NAME = "fraud"
SERVE_NAMESPACE = "serve"


@dataclass(frozen=True)
class DeployedGraph:
    """A running graph: where it listens, which keys it accepts, which Redis it uses."""

    base_url: str
    api_key: str
    admin_key: str
    redis_url: str
    app_name: str = APP_NAME

    def client(self, key: str | None = None, timeout_s: float = 30.0) -> httpx.Client:
        """An HTTP client sending `key` (default: the valid API key) as X-API-Key."""
        headers = {"X-API-Key": key if key is not None else self.api_key}
        return httpx.Client(base_url=self.base_url, timeout=timeout_s, headers=headers)

    @property
    def port(self) -> int:
        return int(httpx.URL(self.base_url).port or 80)


def train_small_bundle(directory: Path, seed: int = 5) -> Path:
    """A champion-like bundle: the training code on a small generated set (~20 s), saved to `directory`."""
    from serve_app.bundle import save_bundle
    from train.fit import FitConfig
    from train.generate import GeneratorConfig, generate
    from train.pipeline import features_for, split_by_time, train_and_evaluate

    df = generate(GeneratorConfig(customers=150, merchants=50, days=14, seed=seed, fraud_rate_target=0.03))
    outcome = train_and_evaluate(
        df, features_for(df, 2.0), split_by_time(df["timestamp"]), FitConfig(xgb_max_rounds=30)
    )
    save_bundle(outcome.bundle, directory)
    return directory


def graph_config(
    redis_url: str,
    bundle_dir: Path,
    env: Mapping[str, str],
    args: Mapping[str, Any] | None = None,
    deployments: Mapping[str, Mapping[str, Any]] | None = None,
    config_path: Path = SERVE_CONFIG,
) -> Any:
    """A Serve config as shipped (serve_config.yaml, or configs/serve_graph.yaml), with the given Redis,
    bundle directory, replica environment and per-deployment overrides; on a free port (an already
    running Serve keeps its own)."""
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    raw["http_options"]["port"] = free_port()
    (app,) = raw["applications"]
    app["args"].update({"redis_url": redis_url, "bundle_dir": str(bundle_dir), **(args or {})})
    app["runtime_env"] = {"env_vars": dict(env)}
    for deployment in app["deployments"]:
        deployment.update((deployments or {}).get(deployment["name"], {}))
    return ServeDeploySchema.model_validate(raw)


def write_secret(path: Path, text: str) -> Path:
    """Create `path` readable by its owner only, then write `text` (never world-readable, even briefly)."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


@dataclass(frozen=True)
class GraphSpec:
    """A graph ready to deploy: its Serve config and the keys written for its replicas."""

    config: Any
    api_key: str
    admin_key: str
    redis_url: str


def prepare_graph(
    redis_url: str,
    bundle_dir: Path,
    data_dir: Path,
    args: Mapping[str, Any] | None = None,
    deployments: Mapping[str, Mapping[str, Any]] | None = None,
    config_path: Path = SERVE_CONFIG,
) -> GraphSpec:
    """Fresh random keys in owner-only files whose *paths* reach the replicas through their runtime_env:
    Ray logs a runtime_env verbatim (runtime_env_agent.log), so the keys themselves must not travel in it."""
    api_key, admin_key = "api-" + secrets.token_hex(12), "admin-" + secrets.token_hex(12)
    data_dir.mkdir(parents=True, exist_ok=True)
    api_keys = write_secret(data_dir / "api_keys", f"spare-{secrets.token_hex(4)},{api_key}")
    env = {
        "FRAUD_API_KEYS_FILE": str(api_keys),
        "FRAUD_ADMIN_KEYS_FILE": str(write_secret(data_dir / "admin_keys", admin_key)),
        "FRAUD_REDIS_URL": redis_url,
        "FRAUD_DATA_DIR": str(data_dir),
    }
    config = graph_config(redis_url, bundle_dir, env, args, deployments, config_path)
    return GraphSpec(config, api_key, admin_key, redis_url)


def deploy_graph(spec: GraphSpec, timeout_s: float = 240.0) -> DeployedGraph:
    """Deploy into the Ray this process is connected to; a no-op when the same config already runs."""
    from serve_app.run import deploy

    (app,) = spec.config.applications
    port = deploy(spec.config, timeout_s=timeout_s)
    return DeployedGraph(f"http://127.0.0.1:{port}", spec.api_key, spec.admin_key, spec.redis_url, app.name)


@contextmanager
def deployed_graph(
    redis_url: str,
    bundle_dir: Path,
    data_dir: Path,
    args: Mapping[str, Any] | None = None,
    deployments: Mapping[str, Mapping[str, Any]] | None = None,
    config_path: Path = SERVE_CONFIG,
) -> Iterator[DeployedGraph]:
    """Deploy a graph, yield it, delete it."""
    from ray import serve

    running = deploy_graph(prepare_graph(redis_url, bundle_dir, data_dir, args, deployments, config_path))
    try:
        yield running
    finally:
        serve.delete(running.app_name)


# ---- looking inside -----------------------------------------------------------------------------------


def luhn_card_number(prefix: str = "4") -> str:
    """A random 16-digit number that passes the Luhn check: what a real card number looks like."""
    body = prefix + "".join(str(secrets.randbelow(10)) for _ in range(15 - len(prefix)))
    total = 0
    for i, ch in enumerate(reversed(body)):
        digit = int(ch)
        if i % 2 == 0:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return body + str((10 - total % 10) % 10)


def ray_logs_dir() -> Path:
    """The log directory of the Ray this process is connected to (serve/ holds the replica logs)."""
    import ray._private.worker as ray_worker

    node = ray_worker._global_node
    if node is None:
        raise RuntimeError("Ray is not initialised in this process")
    return Path(node.get_logs_dir_path())


def files_containing(needles: list[str], roots: list[Path]) -> dict[str, list[str]]:
    """Which needles occur in which files under `roots` (directories or files; decoding errors replaced)."""
    found: dict[str, list[str]] = {}
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*"):
            if not path.is_file():
                continue
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            for needle in needles:
                if needle in text:
                    found.setdefault(needle, []).append(str(path))
    return found


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on `port` (any process)."""
    return {
        c.laddr.ip
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
    }


def replica_actor_names(app_name: str = APP_NAME) -> dict[str, list[str]]:
    """Live replica actors of an app by deployment name (Serve names them SERVE_REPLICA::app#dep#id)."""
    import ray

    replicas: dict[str, list[str]] = {}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        name = str(actor["name"])
        if actor["namespace"] != SERVE_NAMESPACE or not name.startswith(f"SERVE_REPLICA::{app_name}#"):
            continue
        deployment = name.split("#")[1]
        replicas.setdefault(deployment, []).append(name)
    return replicas


def kill_replica(actor_name: str) -> None:
    """ray.kill one replica, as a crashed worker process would die; Serve's controller replaces it."""
    import ray

    ray.kill(ray.get_actor(actor_name, namespace=SERVE_NAMESPACE), no_restart=True)


def wait_until_healthy(app_name: str = APP_NAME, timeout_s: float = 120.0) -> float:
    """Seconds until every deployment of the app is HEALTHY again (raises after `timeout_s`)."""
    from ray import serve

    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        app = serve.status().applications.get(app_name)
        if app is not None and all(d.status == "HEALTHY" for d in app.deployments.values()):
            return time.monotonic() - started
        time.sleep(0.25)
    raise TimeoutError(f"{app_name} not healthy within {timeout_s:.0f} s")


def replica_pids(deployment: str, app_name: str = APP_NAME) -> list[int]:
    """Processes of a deployment's replicas on *this* Ray node (other Rays on the machine are not ours)."""
    import ray._private.worker as ray_worker

    node = ray_worker._global_node
    if node is None:
        raise RuntimeError("Ray is not initialised in this process")
    (raylet,) = node.all_processes["raylet"]
    title = f"ServeReplica:{app_name}:{deployment}"
    pids = []
    for proc in psutil.Process(raylet.process.pid).children(recursive=True):
        try:
            if any(title in part for part in proc.cmdline()):
                pids.append(proc.pid)
        except psutil.Error:
            continue
    return pids
