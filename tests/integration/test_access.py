"""Access control on the real graph: every route but health/docs needs a key, keys never reach a log, and
everything the product starts listens on localhost only."""

from __future__ import annotations

import ast
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from loadtest.chaos_stack import DeployedGraph, files_containing, listening_addresses, ray_logs_dir
from serve_app.redis_server import EmbeddedRedis
from serve_app.run import REPO_ROOT

pytestmark = pytest.mark.integration

PUBLIC = {"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/openapi.json"}
LOOPBACK = {"127.0.0.1", "::1"}


def openapi_operations(graph: DeployedGraph) -> list[tuple[str, str, dict[str, Any]]]:
    spec = httpx.get(f"{graph.base_url}/openapi.json", timeout=30).json()
    return [
        (method.upper(), path, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]


def is_admin(path: str, operation: dict[str, Any]) -> bool:
    return "admin" in path or "admin" in [t.lower() for t in operation.get("tags", [])]


def test_every_route_but_health_and_docs_refuses_missing_or_wrong_keys(graph: DeployedGraph) -> None:
    operations = openapi_operations(graph)
    protected = [(m, p) for m, p, _ in operations if p not in PUBLIC]
    assert len(protected) >= 4, "the spec lists fewer routes than the API has"
    wrong_keys: list[str | None] = [None, "", "wrong-" + secrets.token_hex(8), graph.api_key + "x"]
    wrong_keys.append(graph.api_key[:-1])  # a prefix of a real key is not that key
    for method, path in protected:
        for key in wrong_keys:
            headers = {} if key is None else {"X-API-Key": key}
            response = httpx.request(method, graph.base_url + path, headers=headers, json={}, timeout=30)
            assert response.status_code == 401, f"{method} {path} with key {key!r}: {response.status_code}"
            assert response.headers.get("www-authenticate") == "ApiKey"


def test_a_valid_key_passes_the_guard(graph: DeployedGraph) -> None:
    """The 401s above come from the key check, not from a route that refuses everyone."""
    with graph.client() as client:
        response = client.post("/v1/score", json={})
    assert response.status_code == 422  # past auth, refused by validation


def test_unknown_paths_do_not_reveal_themselves_without_a_key(graph: DeployedGraph) -> None:
    for path in ("/v1/nope", "/admin", "/v1/score/../feedback"):
        assert httpx.get(graph.base_url + path, timeout=30).status_code == 401, path


def test_health_readiness_and_docs_need_no_key(graph: DeployedGraph) -> None:
    for path in ("/healthz", "/readyz", "/docs", "/openapi.json"):
        assert httpx.get(graph.base_url + path, timeout=30).status_code == 200, path


def test_admin_routes_need_the_admin_key(graph: DeployedGraph) -> None:
    admin = [(m, p) for m, p, op in openapi_operations(graph) if is_admin(p, op)]
    if not admin:
        pytest.skip("the graph exposes no admin routes (yet): nothing to protect with FRAUD_ADMIN_KEYS")
    for method, path in admin:
        for key in (graph.api_key, "wrong-" + secrets.token_hex(4)):
            response = httpx.request(method, graph.base_url + path, headers={"X-API-Key": key}, timeout=30)
            assert response.status_code in (401, 403), f"{method} {path} accepted a non-admin key"
        response = httpx.request(
            method, graph.base_url + path, headers={"X-API-Key": graph.admin_key}, timeout=30
        )
        assert response.status_code not in (401, 403), f"{method} {path} refused the admin key"


def test_keys_never_reach_a_log(graph: DeployedGraph, graph_redis: EmbeddedRedis) -> None:
    wrong = "wrong-" + secrets.token_hex(12)
    with graph.client() as client:
        assert client.post("/v1/score", json={"bad": wrong}).status_code == 422
        assert client.get("/readyz").status_code == 200
    with graph.client(key=wrong) as client:
        assert client.post("/v1/score", json={"X-API-Key": wrong}).status_code == 401
    with graph.client(key=graph.admin_key) as client:
        client.post("/v1/feedback", json={"api_key": graph.admin_key})
    time.sleep(1.5)  # Ray flushes worker output to its log files asynchronously
    roots = [ray_logs_dir(), graph_redis.directory]
    leaked = files_containing([graph.api_key, graph.admin_key, wrong], roots)
    assert not leaked, f"keys found in logs: {leaked}"


def test_serve_http_and_embedded_redis_listen_on_localhost_only(
    graph: DeployedGraph, graph_redis: EmbeddedRedis
) -> None:
    port = graph.port
    http_addresses = listening_addresses(port)
    assert http_addresses, f"nothing listens on the Serve port {port}"
    assert http_addresses <= LOOPBACK, f"Serve HTTP listens on {http_addresses}"
    client = redis.Redis.from_url(graph_redis.url, decode_responses=True)
    try:
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        assert client.config_get("protected-mode")["protected-mode"] == "yes"
    finally:
        client.close()
    assert listening_addresses(graph_redis.port) <= LOOPBACK


def _call_keywords(source: Path, dotted: str) -> list[dict[str | None, Any]]:
    """Literal keyword arguments of every call to `dotted` (e.g. 'ray.init') in a source file."""
    calls = []
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == dotted:
            calls.append(
                {k.arg: ast.literal_eval(k.value) for k in node.keywords if isinstance(k.value, ast.Constant)}
            )
    return calls


def test_make_run_binds_dashboard_http_and_mlflow_to_localhost() -> None:
    """`make run` is not under test here (it trains and blocks), so its arguments are read from the source."""
    (init,) = _call_keywords(REPO_ROOT / "serve_app" / "run.py", "ray.init")
    if init.get("include_dashboard", True):
        assert init.get("dashboard_host") == "127.0.0.1", f"ray.init args: {init}"
    config = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text(encoding="utf-8"))
    assert config["http_options"]["host"] == "127.0.0.1"
    # The MLflow UI command the banner prints must not open it to the network (mlflow's default is local).
    run_source = (REPO_ROOT / "serve_app" / "run.py").read_text(encoding="utf-8")
    mlflow_line = next(line for line in run_source.splitlines() if "mlflow ui" in line)
    assert "--host" not in mlflow_line, mlflow_line
    # Keys reach the replicas as files: a runtime_env is logged verbatim by Ray.
    assert '"FRAUD_API_KEYS"' not in run_source.split("worker_env", 1)[-1].split("ray.init", 1)[0]
