"""Structural checks of docker-compose.yml, the Dockerfile and the Prometheus/Grafana configs they mount."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.edge import Address, EdgeSettings, parse_args
from serve_app.run import EDGE_ENV
from serve_app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_PATH = ROOT / "docker-compose.yml"
REQUIRED_SECRETS = (
    "POSTGRES_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
    "FRAUD_API_KEYS",
    "REDIS_PASSWORD",
    "RAY_AUTH_TOKEN",
)
STATEFUL = {"redis": "/data", "postgres": "/var/lib/postgresql/data", "mlflow": "/mlartifacts"}
PUBLISHING = {"edge", "ray-head", "grafana", "locust"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_PATH.read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def _command(service: dict[str, Any]) -> str:
    command = service.get("command", "")
    return command if isinstance(command, str) else " ".join(str(part) for part in command)


def _ray_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if "ray start" in _command(s)}


def _ray_start_option(command: str, option: str) -> str:
    line = next(line for line in command.replace("\\\n", " ").splitlines() if "ray start" in line)
    match = re.search(rf"--{option}[= ](\S+)", line)
    assert match, f"ray start without --{option}: {line}"
    return match.group(1).strip("\"'")


def test_every_service_has_an_image_and_built_images_are_shared(services: dict[str, dict[str, Any]]) -> None:
    built = {s["image"] for s in services.values() if "build" in s}
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        if "build" not in service:
            image = service["image"]
            # Third-party images are pinned; ours must be built by some service of this file.
            assert image in built or re.search(r":v?[0-9][\w.\-]*$", image), f"{name}: {image}"


def test_ray_head_and_workers_run_one_image_built_from_the_dockerfile(
    services: dict[str, dict[str, Any]],
) -> None:
    head, worker = services["ray-head"], services["ray-worker"]
    assert head["build"]["context"] == "."
    assert worker["image"] == head["image"]
    assert "build" not in worker  # `--scale ray-worker=N` must not build N images


def test_services_others_wait_for_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name in (*STATEFUL, "ray-head", "prometheus", "grafana"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on must name a condition per dependency"
        for target, spec in depends_on.items():
            assert target in services, f"{name} depends on unknown {target}"
            assert spec["condition"] in {
                "service_healthy",
                "service_started",
                "service_completed_successfully",
            }
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[target], (
                    f"{name} waits for {target}, which has no healthcheck"
                )


def test_the_api_waits_for_its_store_and_model_registry(services: dict[str, dict[str, Any]]) -> None:
    for ray_service in ("ray-head", "ray-worker"):
        depends_on = services[ray_service]["depends_on"]
        assert depends_on["redis"]["condition"] == "service_healthy"
        assert depends_on["mlflow"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_state_lives_on_declared_named_volumes(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
                assert str(volume).endswith(":ro"), f"{name}: config mounts are read-only"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"
    for name, path in STATEFUL.items():
        mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in compose["services"][name]["volumes"]}
        assert mounts.get(path) in declared, f"{name} keeps {path} outside a named volume"


def test_redis_persists_with_aof(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    assert "--appendonly yes" in _command(redis)


def test_only_the_api_dashboards_and_locust_are_published_and_only_on_localhost(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        ports = service.get("ports", [])
        if name not in PUBLISHING:
            assert not ports, f"{name} publishes {ports}"
        for port in ports:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond localhost"
    published = {str(p).rsplit(":", 1)[1] for p in services["ray-head"]["ports"]}
    assert published == {"8265"}  # Ray dashboard; Serve, GCS, metrics, client ports stay inside
    # The API only through the edge, which sheds overload before it reaches Serve.
    assert [str(p).rsplit(":", 1)[1] for p in services["edge"]["ports"]] == ["8000"]


def test_serve_behind_the_edge_is_configured_as_make_run_configures_it(
    services: dict[str, dict[str, Any]],
) -> None:
    """Serve's HAProxy leaves resends to the edge and routes away from a dead replica at once."""
    for name in ("ray-head", "ray-worker"):
        environment = services[name]["environment"]
        assert {k: environment.get(k) for k in EDGE_ENV} == EDGE_ENV, name


def test_the_edge_fronts_serve_and_locust_goes_through_it(services: dict[str, dict[str, Any]]) -> None:
    command = services["edge"]["command"]
    assert command[:3] == ["python", "-m", "serve_app.edge"]
    args = parse_args(command[3:])
    assert args.upstream == Address("ray-head", 8000)
    assert args.listen.port == 8000
    assert services["edge"]["depends_on"]["ray-head"]["condition"] == "service_healthy"
    assert "--host=http://edge:8000" in _command(services["locust"])
    config = yaml.safe_load((ROOT / "configs" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    port = services["edge"]["environment"]["FRAUD_EDGE_METRICS_PORT"]
    assert jobs["edge"]["static_configs"][0]["targets"] == [f"edge:{port}"]


def test_required_secrets_fail_loudly_when_unset() -> None:
    text = COMPOSE_PATH.read_text()
    for secret in REQUIRED_SECRETS:
        # `$${VAR}` is a shell variable inside a command, not compose interpolation.
        uses = re.findall(rf"(?<!\$)\$\{{{secret}([^}}]*)\}}", text)
        assert uses, f"{secret} is never used"
        for use in uses:
            assert re.fullmatch(r":\?.+", use), f"${{{secret}{use}}} must be ${{{secret}:?message}}"
    # No literal credentials: every password-ish setting comes from a variable.
    for key, value in re.findall(r"^\s*([A-Z_]*(?:PASSWORD|_KEYS|TOKEN))\s*:\s*(.+)$", text, flags=re.M):
        assert value.strip().startswith("${"), f"{key} is set to a literal"


def test_environment_names_match_what_the_code_reads(services: dict[str, dict[str, Any]]) -> None:
    settings_vars = {f"FRAUD_{name.upper()}" for name in Settings.model_fields}
    settings_vars |= {f"FRAUD_EDGE_{name.upper()}" for name in EdgeSettings.model_fields}
    loadtest_sources = " ".join(p.read_text() for p in (ROOT / "loadtest").glob("*.py"))
    for name, service in services.items():
        environment = service.get("environment", {})
        assert isinstance(environment, dict), f"{name}: environment as a mapping"
        for var in environment:
            if not var.startswith("FRAUD_"):
                continue
            if name == "locust":
                assert var in settings_vars or var in loadtest_sources, f"locust: nothing reads {var}"
            else:
                assert var in settings_vars, f"{name}: {var} is not a Settings field"
    for name, service in _ray_services(services).items():
        environment = service["environment"]
        for var in ("FRAUD_REDIS_URL", "FRAUD_API_KEYS", "MLFLOW_TRACKING_URI", "FRAUD_DATA_DIR"):
            assert var in environment, f"{name} lacks {var}"
        assert environment["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert re.fullmatch(
            r"redis://:\$\{REDIS_PASSWORD:\?[^}]+\}@redis:6379/0", environment["FRAUD_REDIS_URL"]
        )


def test_ray_services_have_shared_memory_and_gcs_off_the_redis_port(
    services: dict[str, dict[str, Any]],
) -> None:
    ray_services = _ray_services(services)
    assert set(ray_services) == {"ray-head", "ray-worker"}
    for name, service in ray_services.items():
        assert service.get("shm_size"), f"{name}: Ray's object store needs shm_size"
        # Token auth: joining the cluster, `serve deploy` and the dashboard need the shared secret.
        assert service["environment"]["RAY_AUTH_MODE"] == "token", name
        assert service["environment"]["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?"), name
    gcs_port = _ray_start_option(_command(services["ray-head"]), "port")
    assert gcs_port != "6379"
    assert _ray_start_option(_command(services["ray-worker"]), "address") == f"ray-head:{gcs_port}"


def test_ray_head_trains_when_no_champion_and_deploys_the_serve_config(
    services: dict[str, dict[str, Any]],
) -> None:
    command = _command(services["ray-head"])
    check = command.index("get_model_version_by_alias")
    train = command.index("python -m train")
    deploy = command.index("serve deploy")
    assert check < train < deploy
    (config,) = re.findall(r"open\('([\w/.]+\.yaml)'\)\)", command)
    assert config == "configs/serve_graph.yaml"
    assert (ROOT / config).is_file()
    for module in re.findall(r"python -m ([\w.]+)", command):
        path = ROOT / module.replace(".", "/")
        assert (path / "__main__.py").exists() or path.with_suffix(".py").exists(), f"no module {module}"
    # The readiness probe of the container is the API's own.
    assert "/readyz" in " ".join(services["ray-head"]["healthcheck"]["test"])


def test_locust_runs_only_under_the_loadtest_profile(services: dict[str, dict[str, Any]]) -> None:
    assert services["locust"]["profiles"] == ["loadtest"]
    assert (ROOT / _command(services["locust"]).split()[2]).exists()  # locust -f <file>
    assert all("profiles" not in s for name, s in services.items() if name != "locust")


def test_prometheus_scrapes_every_ray_node(services: dict[str, dict[str, Any]]) -> None:
    from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE

    config = yaml.safe_load((ROOT / "configs" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    file_sd = [f for sd in jobs["ray"]["file_sd_configs"] for f in sd["files"]]
    assert file_sd == [f"/tmp/ray/{PROMETHEUS_SERVICE_DISCOVERY_FILE}"]
    head_port = _ray_start_option(_command(services["ray-head"]), "metrics-export-port")
    worker_port = _ray_start_option(_command(services["ray-worker"]), "metrics-export-port")
    static = [t for sc in jobs["ray-compose"]["static_configs"] for t in sc["targets"]]
    assert static == [f"ray-head:{head_port}"]
    (dns,) = jobs["ray-compose"]["dns_sd_configs"]
    assert dns["names"] == ["ray-worker"]
    assert str(dns["port"]) == worker_port


def test_grafana_provisioning_matches_the_stack(services: dict[str, dict[str, Any]]) -> None:
    provisioning = ROOT / "configs" / "grafana" / "provisioning"
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasource["url"] == "http://prometheus:9090"
    head_env = services["ray-head"]["environment"]
    assert datasource["name"] == head_env["RAY_PROMETHEUS_NAME"]
    assert head_env["RAY_PROMETHEUS_HOST"] == datasource["url"]
    assert head_env["RAY_GRAFANA_HOST"] == "http://grafana:3000"
    providers = yaml.safe_load((provisioning / "dashboards" / "dashboards.yml").read_text())["providers"]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in services["grafana"]["volumes"]}
    for provider in providers:
        path = provider["options"]["path"]
        mount = next((m for m in mounts if path == m or path.startswith(m + "/")), None)
        assert mount, f"dashboard path {path} is not mounted into grafana"
    assert mounts["/etc/grafana/dashboards/fraud"] == "./configs/grafana/dashboards"
    assert services["grafana"]["environment"]["GF_SECURITY_ALLOW_EMBEDDING"] == "true"


# ---- Dockerfile and build context ----


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def _dockerignore_patterns() -> list[re.Pattern[str]]:
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("!"), "exceptions are not used (keep the ignore list easy to audit)"
        regex = re.escape(line).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        # A pattern that matches a directory excludes everything below it.
        patterns.append(re.compile(rf"^{regex}(?:/.*)?$"))
    return patterns


def _excluded(relative: str, patterns: list[re.Pattern[str]]) -> bool:
    return any(p.match(relative) for p in patterns)


def test_dockerfile_is_slim_non_root_and_installs_without_dev_extras() -> None:
    instructions = _dockerfile_instructions()
    text = " ".join(arg for _, arg in instructions)
    assert "python:3.11-slim" in text
    stages = [arg for op, arg in instructions if op == "FROM"]
    assert stages[-1].endswith("AS runtime"), "runtime must be the last (default) stage"
    runtime_start = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    runtime = instructions[runtime_start:]
    users = [arg for op, arg in runtime if op == "USER"]
    assert users, "the runtime stage must switch to a non-root USER"
    assert users[-1].split(":")[0] not in {"0", "root"}, "the image must not run as root"
    installs = [arg for op, arg in runtime if op == "RUN" and "pip install" in arg]
    assert any(re.search(r"pip install (--no-deps )?\.(\s|$)", arg) for arg in installs)
    assert not any("[dev]" in arg or "-e " in arg for arg in installs)


def test_everything_the_dockerfile_copies_is_in_the_build_context() -> None:
    patterns = _dockerignore_patterns()
    for op, arg in _dockerfile_instructions():
        if op != "COPY" or arg.startswith("--from"):
            continue
        *sources, _target = shlex.split(arg)
        for source in sources:
            path = ROOT / source
            assert path.exists(), f"COPY {source}: not in the repository"
            assert not _excluded(source, patterns), f"COPY {source}: excluded by .dockerignore"
            files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
            for file in files:
                relative = file.relative_to(ROOT).as_posix()
                if _excluded(relative, patterns):
                    assert "__pycache__" in relative or relative.endswith(".pyc"), f"{relative} is excluded"


@pytest.mark.parametrize(
    "secret", [".env", "data/transactions.parquet", "deploy/.env.prod", "x/tls.key", ".git"]
)
def test_secrets_and_data_never_enter_the_build_context(secret: str) -> None:
    assert _excluded(secret, _dockerignore_patterns())
