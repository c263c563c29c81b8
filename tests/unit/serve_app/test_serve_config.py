"""serve_config.yaml (fused) and configs/serve_graph.yaml (graph): valid for Serve and AppArgs, sized to fit
a 2-CPU machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve.schema import DeploymentSchema, ServeApplicationSchema, ServeDeploySchema

from serve_app.app import AppArgs, build_app, resolve_rules_path
from serve_app.ingress import MAX_CONCURRENT_BATCHES, IngressUserConfig
from serve_app.models import ModelUserConfig
from serve_app.rules import RuleSet, RulesUserConfig

REPO = Path(__file__).resolve().parents[3]
MACHINE_CPUS = 2.0


CONFIGS = {"fused": REPO / "serve_config.yaml", "graph": REPO / "configs" / "serve_graph.yaml"}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def raw(request: pytest.FixtureRequest) -> dict[str, Any]:
    data = yaml.safe_load(CONFIGS[request.param].read_text())
    assert isinstance(data, dict)
    return data


def _topology(config: ServeDeploySchema) -> str:
    (app,) = config.applications
    return AppArgs.model_validate(app.args).topology


def test_each_file_holds_its_topology() -> None:
    for topology, path in CONFIGS.items():
        (app,) = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text())).applications
        assert AppArgs.model_validate(app.args).topology == topology, path.name


def test_both_files_share_every_arg_but_the_topology() -> None:
    # One product, two layouts: a difference in limits or deadlines would make the benchmark unfair.
    args = [yaml.safe_load(path.read_text())["applications"][0]["args"] for path in CONFIGS.values()]
    for a in args:
        a.pop("topology")
    assert args[0] == args[1]


@pytest.fixture(scope="module")
def config(raw: dict[str, Any]) -> ServeDeploySchema:
    return ServeDeploySchema.model_validate(raw)


def _deployments(config: ServeDeploySchema) -> dict[str, DeploymentSchema]:
    (app,) = config.applications
    return {d.name: d for d in app.deployments}


def test_no_unknown_keys_hide_in_the_file(raw: dict[str, Any]) -> None:
    # ServeDeploySchema tolerates unknown keys (forward compatibility), so a typo would pass silently.
    assert set(raw) <= set(ServeDeploySchema.model_fields)
    for app in raw["applications"]:
        assert set(app) <= set(ServeApplicationSchema.model_fields)
        for deployment in app["deployments"]:
            assert set(deployment) <= set(DeploymentSchema.model_fields), deployment["name"]


def test_args_are_valid_app_args(config: ServeDeploySchema) -> None:
    (app,) = config.applications
    assert app.import_path == "serve_app.app:build_app"
    args = AppArgs.model_validate(app.args)
    assert resolve_rules_path(args.rules_path).is_file()
    RuleSet.from_yaml(resolve_rules_path(args.rules_path))


def test_every_deployment_of_the_graph_is_configured_and_nothing_else(config: ServeDeploySchema) -> None:
    from ray.serve._private.build_app import build_app as build_serve_app  # what `serve deploy` builds

    (app,) = config.applications
    built = build_serve_app(build_app(app.args), name=app.name)
    assert {d.name for d in built.deployments} == set(_deployments(config))


def _autoscaling(deployment: DeploymentSchema) -> dict[str, Any]:
    auto = deployment.autoscaling_config
    assert isinstance(auto, dict), f"{deployment.name} has no autoscaling_config"
    return auto


def test_graph_fits_two_cpus_with_headroom(config: ServeDeploySchema) -> None:
    deployments = _deployments(config).values()
    cpus = {d.name: d.ray_actor_options.num_cpus for d in deployments}
    assert all(c is not None and 0 < c < 1 for c in cpus.values()), cpus
    at_min = sum(cpus[d.name] * _autoscaling(d)["min_replicas"] for d in deployments)
    at_max = sum(cpus[d.name] * _autoscaling(d)["max_replicas"] for d in deployments)
    assert at_min <= MACHINE_CPUS * 0.75, f"{at_min} CPUs at min replicas leaves no headroom"
    assert at_max <= MACHINE_CPUS, f"{at_max} CPUs at max replicas cannot be placed"


def test_every_deployment_autoscales_with_bounded_queues(config: ServeDeploySchema) -> None:
    for d in _deployments(config).values():
        auto = _autoscaling(d)
        assert 1 <= auto["min_replicas"] <= auto["max_replicas"], d.name
        assert 0 < auto["target_ongoing_requests"] <= d.max_ongoing_requests, d.name
        assert d.max_queued_requests > 0, d.name


def test_ingress_can_fill_its_batches(config: ServeDeploySchema) -> None:
    ingress = _deployments(config)["Ingress"]
    batching = IngressUserConfig.model_validate(ingress.user_config)
    assert ingress.max_ongoing_requests >= batching.max_batch_size * MAX_CONCURRENT_BATCHES
    assert batching.batch_wait_timeout_s <= 0.01  # waiting longer would dominate the latency budget


def _user_config(deployment: DeploymentSchema) -> dict[str, Any] | None:
    value = deployment.user_config  # an unset field holds Serve's DEFAULT sentinel
    return value if isinstance(value, dict) else None


def test_user_configs_are_valid_for_their_deployments(config: ServeDeploySchema) -> None:
    from ray.serve._private.build_app import build_app as build_serve_app

    deployments = _deployments(config)
    if _topology(config) == "fused":
        ingress = IngressUserConfig.model_validate(_user_config(deployments["Ingress"]) or {})
        if ingress.rules is not None:
            RuleSet.from_config({"rules": ingress.rules})
        return
    for name in ("LogisticRegressionModel", "XGBoostModel"):
        ModelUserConfig.model_validate(_user_config(deployments[name]) or {})
    # The RuleEngine gets its rules as user_config: inline in the file, or else from args.rules_path.
    (app,) = config.applications
    built = build_serve_app(build_app(app.args), name=app.name)
    (engine,) = [d for d in built.deployments if d.name == "RuleEngine"]
    inline = _user_config(deployments["RuleEngine"])
    delivered = inline or engine.user_config
    rules = RuleSet.from_config(RulesUserConfig.model_validate(delivered).model_dump())
    if inline is None:
        from_file = RuleSet.from_yaml(resolve_rules_path(AppArgs.model_validate(app.args).rules_path))
        assert rules.to_config() == from_file.to_config()


def test_http_is_local_and_access_logs_are_off(config: ServeDeploySchema) -> None:
    assert config.http_options.host == "127.0.0.1"
    assert config.http_options.port == 8000
    assert config.logging_config is not None
    assert config.logging_config.enable_access_log is False
    (app,) = config.applications
    assert app.logging_config is not None
    assert app.logging_config.enable_access_log is False


def test_app_args_refuse_unknown_and_mistyped_keys() -> None:
    with pytest.raises(ValueError, match="redis_ur"):
        AppArgs.model_validate({"redis_ur": "redis://x"})
    with pytest.raises(ValueError, match="max_body_bytes"):
        AppArgs.model_validate({"max_body_bytes": "1MB"})


def test_models_and_ingress_poll_the_model_alias_at_one_interval(config: ServeDeploySchema) -> None:
    deployments = _deployments(config)
    if _topology(config) == "fused":
        ingress = IngressUserConfig.model_validate(_user_config(deployments["Ingress"]) or {})
        assert 0 < ingress.model_poll_interval_s <= 300, "a moved champion should be served within minutes"
        return
    intervals = {
        name: schema.model_validate(_user_config(deployments[name]) or {}).model_poll_interval_s
        for name, schema in (
            ("Ingress", IngressUserConfig),
            ("LogisticRegressionModel", ModelUserConfig),
            ("XGBoostModel", ModelUserConfig),
        )
    }
    # One interval: the ingress switches after the models, so a slower model poll only means more
    # pinned loads on the request path, and a faster one more registry queries for nothing.
    assert len(set(intervals.values())) == 1, intervals
    assert 0 < intervals["Ingress"] <= 300, "a moved champion should be served within minutes"


def test_replicas_holding_an_xgboost_booster_let_openmp_wait_passively(config: ServeDeploySchema) -> None:
    deployments = _deployments(config)
    holders = (
        ("Ingress",)
        if _topology(config) == "fused"
        else ("Ingress", "LogisticRegressionModel", "XGBoostModel")
    )
    for name in holders:
        runtime_env = deployments[name].ray_actor_options.runtime_env or {}
        assert runtime_env.get("env_vars", {}).get("OMP_WAIT_POLICY") == "PASSIVE", name
