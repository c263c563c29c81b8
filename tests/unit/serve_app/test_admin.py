"""The admin route on a small real FastAPI app behind GuardMiddleware, and the reload report's verdicts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serve_app.admin import ReloadResponse, admin_router, summarize
from serve_app.http_api import GuardMiddleware
from serve_app.reloader import RefreshOutcome

API_KEY = "api-key-1"
ADMIN_KEY = "admin-key-1"


def outcome(status: str, version: str, holder: str = "XGBoostModel#a") -> RefreshOutcome:
    return RefreshOutcome.model_validate(
        {"holder": holder, "status": status, "version": version, "held_versions": [version]}
    )


@pytest.fixture
def reloads() -> list[int]:
    return []


@pytest.fixture
def client(reloads: list[int]) -> Iterator[TestClient]:
    async def reload() -> tuple[int, ReloadResponse]:
        reloads.append(1)
        return summarize("2", [outcome("swapped", "2"), outcome("swapped", "2", "Ingress#b")])

    app = FastAPI()
    # As the ingress wires it: admin keys pass the guard, the admin router demands one.
    app.add_middleware(GuardMiddleware, api_keys=[API_KEY, ADMIN_KEY], max_body_bytes=4096)
    app.include_router(admin_router([ADMIN_KEY], reload))
    with TestClient(app) as test_client:
        yield test_client


def test_the_admin_key_reloads_and_gets_the_served_versions(client: TestClient, reloads: list[int]) -> None:
    response = client.post("/v1/admin/reload", headers={"X-API-Key": ADMIN_KEY})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["model_version"], body["consistent"]) == ("reloaded", "2", True)
    assert [r["holder"] for r in body["replicas"]] == ["XGBoostModel#a", "Ingress#b"]
    assert reloads == [1]


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, 401),
        ({"X-API-Key": "nope"}, 401),
        ({"X-API-Key": ADMIN_KEY[:-1]}, 401),
        ({"X-API-Key": API_KEY}, 403),
    ],
)
def test_anything_but_an_admin_key_is_refused(
    client: TestClient, reloads: list[int], headers: dict[str, str], code: int
) -> None:
    response = client.post("/v1/admin/reload", headers=headers)
    assert response.status_code == code
    assert reloads == []


def test_the_route_is_tagged_admin_in_openapi(client: TestClient) -> None:
    spec: dict[str, Any] = client.app.openapi()  # type: ignore[attr-defined]
    operation = spec["paths"]["/v1/admin/reload"]["post"]
    assert operation["tags"] == ["admin"]
    assert {"401", "403", "409", "503"} <= set(operation["responses"])


@pytest.mark.parametrize(
    ("statuses", "versions", "expected"),
    [
        (["swapped", "swapped", "unchanged"], ["2", "2", "2"], ("reloaded", 200, True)),
        (["unchanged", "unchanged"], ["2", "2"], ("unchanged", 200, True)),
        (["refused", "refused"], ["2", "2"], ("refused", 409, True)),
        (["swapped", "failed"], ["2", "unknown"], ("failed", 503, False)),
        (["swapped", "unchanged"], ["2", "1"], ("failed", 503, False)),  # replicas disagree
    ],
)
def test_summary_verdicts(statuses: list[str], versions: list[str], expected: tuple[str, int, bool]) -> None:
    code, report = summarize("2", [outcome(s, v) for s, v in zip(statuses, versions, strict=True)])
    assert (report.status, code, report.consistent) == expected
    assert report.model_version == "2"
