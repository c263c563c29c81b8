"""Structural checks of the KubeRay edge manifest against the RayService, EdgeSettings and the edge's CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.edge import Address, EdgeSettings, parse_args

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "configs" / "kuberay"


@pytest.fixture(scope="module")
def documents() -> dict[str, dict[str, Any]]:
    loaded = list(yaml.safe_load_all((KUBERAY / "edge.yaml").read_text()))
    return {doc["kind"]: doc for doc in loaded}


@pytest.fixture(scope="module")
def rayservice() -> dict[str, Any]:
    loaded = yaml.safe_load((KUBERAY / "rayservice.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _container(documents: dict[str, dict[str, Any]]) -> dict[str, Any]:
    containers = documents["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def test_the_edge_forwards_to_the_serve_service_kuberay_creates(
    documents: dict[str, dict[str, Any]], rayservice: dict[str, Any]
) -> None:
    command = _container(documents)["command"]
    assert command[:3] == ["python", "-m", "serve_app.edge"]
    args = parse_args(command[3:])
    serve = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["http_options"]
    # KubeRay names the Service in front of the Serve proxies <RayService name>-serve-svc.
    assert args.upstream == Address(f"{rayservice['metadata']['name']}-serve-svc", serve["port"])
    assert args.listen.host == "0.0.0.0"


def test_the_edge_settings_are_valid_and_follow_dns(documents: dict[str, dict[str, Any]]) -> None:
    env = {item["name"]: item["value"] for item in _container(documents)["env"]}
    fields = {f"FRAUD_EDGE_{name.upper()}": name for name in EdgeSettings.model_fields}
    unknown = sorted(set(env) - set(fields))
    assert not unknown, f"not EdgeSettings fields: {unknown}"
    settings = EdgeSettings.model_validate({fields[name]: value for name, value in env.items()})
    # A Service name, resolved at run time: the edge may start before the RayService creates it.
    assert settings.follow_dns is True
    assert settings.metrics_port is not None


def test_the_service_selects_the_edge_pods_and_their_ports(documents: dict[str, dict[str, Any]]) -> None:
    deployment, service = documents["Deployment"], documents["Service"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container_ports = {p["name"] for p in _container(documents)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports


def test_the_edge_runs_the_rayservice_image_as_non_root_and_probes_only_itself(
    documents: dict[str, dict[str, Any]], rayservice: dict[str, Any]
) -> None:
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = _container(documents)
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert container["image"] == head["image"]
    # /readyz would be Serve's readiness, which is 503 while Redis is down and scoring is degraded:
    # the edge pods must stay in the Service then.
    for probe in ("readinessProbe", "livenessProbe"):
        assert "tcpSocket" in container[probe], probe
    # The config directory is the only writable path.
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert parse_args(container["command"][3:]).dir == Path("/tmp/edge")
    assert "/tmp/edge" in mounts
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
