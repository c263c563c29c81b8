"""Structural checks of the KubeRay RayService manifest against configs/serve_graph.yaml, Settings and Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SECRET_VARS = ("FRAUD_REDIS_URL", "FRAUD_API_KEYS", "MLFLOW_TRACKING_URI")


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "configs" / "kuberay" / "rayservice.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def serve_config(manifest: dict[str, Any]) -> dict[str, Any]:
    loaded = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert isinstance(loaded, dict)
    return loaded


def _pod_specs(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = manifest["spec"]["rayClusterConfig"]
    pods = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    for group in cluster["workerGroupSpecs"]:
        pods[group["groupName"]] = group["template"]["spec"]
    return pods


def _quantity(value: str | int | float) -> float:
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def test_it_is_a_rayservice_for_the_installed_ray(manifest: dict[str, Any]) -> None:
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == "RayService"
    assert manifest["metadata"]["name"]
    assert manifest["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__


def test_serve_config_is_valid_and_its_applications_equal_the_graph_config(
    serve_config: dict[str, Any],
) -> None:
    ServeDeploySchema.model_validate(serve_config)
    repo_config = yaml.safe_load((ROOT / "configs" / "serve_graph.yaml").read_text())
    assert serve_config["applications"] == repo_config["applications"]
    # Inside a pod the proxy must listen beyond loopback; the Kubernetes Service decides the exposure.
    assert serve_config["http_options"]["host"] == "0.0.0.0"


def test_head_and_worker_groups_request_and_limit_resources(manifest: dict[str, Any]) -> None:
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["workerGroupSpecs"], "no worker group"
    for group in cluster["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for pod_name, pod in _pod_specs(manifest).items():
        for container in pod["containers"]:
            resources = container["resources"]
            for kind in ("cpu", "memory"):
                request, limit = resources["requests"][kind], resources["limits"][kind]
                assert 0 < _quantity(request) <= _quantity(limit), f"{pod_name}: {kind} {request} > {limit}"


def test_the_graph_fits_the_smallest_cluster(manifest: dict[str, Any], serve_config: dict[str, Any]) -> None:
    cluster = manifest["spec"]["rayClusterConfig"]
    cpus = _quantity(
        cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]
    )
    for group in cluster["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        cpus += group["minReplicas"] * _quantity(limits["cpu"])
    needed = 0.0
    for application in serve_config["applications"]:
        for deployment in application["deployments"]:
            replicas = deployment.get("autoscaling_config", {}).get(
                "min_replicas", deployment.get("num_replicas", 1)
            )
            needed += replicas * deployment.get("ray_actor_options", {}).get("num_cpus", 1)
    assert needed <= cpus


def test_every_pod_runs_the_same_image_as_non_root_with_shared_memory(manifest: dict[str, Any]) -> None:
    images = set()
    for pod_name, pod in _pod_specs(manifest).items():
        assert pod["securityContext"]["runAsNonRoot"] is True, pod_name
        assert pod["securityContext"]["runAsUser"] != 0, pod_name
        shm_volumes = {v["name"] for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"}
        for container in pod["containers"]:
            images.add(container["image"])
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts.get("/dev/shm") in shm_volumes, f"{pod_name}: no in-memory /dev/shm"
    assert len(images) == 1


def test_secrets_come_from_a_secret_and_names_match_settings(manifest: dict[str, Any]) -> None:
    settings_vars = {f"FRAUD_{name.upper()}" for name in Settings.model_fields}
    for pod_name, pod in _pod_specs(manifest).items():
        for container in pod["containers"]:
            env = {item["name"]: item for item in container["env"]}
            for name in env:
                if name.startswith("FRAUD_"):
                    assert name in settings_vars, f"{pod_name}: {name} is not a Settings field"
            secret_names = set()
            for name in SECRET_VARS:
                assert name in env, f"{pod_name} lacks {name}"
                assert "value" not in env[name], f"{pod_name}: {name} must not be a literal"
                ref = env[name]["valueFrom"]["secretKeyRef"]
                assert ref["key"] == name
                assert not ref.get("optional", False), f"{pod_name}: {name} is required"
                secret_names.add(ref["name"])
            assert len(secret_names) == 1


def test_every_node_exports_metrics_for_prometheus(manifest: dict[str, Any]) -> None:
    cluster = manifest["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        port = group["rayStartParams"]["metrics-export-port"]
        container_ports = {p["containerPort"] for p in group["template"]["spec"]["containers"][0]["ports"]}
        assert int(port) in container_ports
