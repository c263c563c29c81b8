"""The admin API (`POST /v1/admin/reload` behind an admin key) and the graph-wide reload it triggers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Security
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, Field
from ray.serve.handle import DeploymentHandle

from serve_app.http_api import API_KEY_HEADER, keys_match
from serve_app.reloader import RefreshOutcome

ADMIN_PREFIX = "/v1/admin"
# Below serve_config.yaml's request_timeout_s (10 s): the admin gets a report, not a proxy timeout. A
# replica still loading then is reported as failed and finishes in the background.
BROADCAST_TIMEOUT_S = 8.0
STATUS_CODES = {"reloaded": 200, "unchanged": 200, "refused": 409, "failed": 503}


class ReloadResponse(BaseModel):
    """What every replica serves after the reload."""

    status: Literal["reloaded", "unchanged", "refused", "failed"] = Field(
        description="refused: the alias points at a bundle that breaks the contract, the old one serves on; "
        "failed: a replica did not answer or the replicas disagree"
    )
    model_version: str = Field(description="The version new requests are scored with")
    consistent: bool = Field(description="Every replica serves model_version")
    replicas: list[RefreshOutcome]


def summarize(model_version: str, outcomes: Sequence[RefreshOutcome]) -> tuple[int, ReloadResponse]:
    """The HTTP status and body of a reload from every replica's outcome."""
    statuses = {o.status for o in outcomes}
    consistent = all(o.version == model_version for o in outcomes)
    status: Literal["reloaded", "unchanged", "refused", "failed"]
    if "failed" in statuses or not consistent:
        status = "failed"
    elif "refused" in statuses:
        status = "refused"
    else:
        status = "reloaded" if "swapped" in statuses else "unchanged"
    report = ReloadResponse(
        status=status, model_version=model_version, consistent=consistent, replicas=list(outcomes)
    )
    return STATUS_CODES[status], report


def _failed(holder: str, reason: str) -> RefreshOutcome:
    return RefreshOutcome(holder=holder, status="failed", version="unknown", held_versions=[], detail=reason)


async def broadcast_reload(
    handle: DeploymentHandle, deployment: str, method: str, timeout_s: float = BROADCAST_TIMEOUT_S
) -> list[RefreshOutcome]:
    """Call `method` (a reload returning a RefreshOutcome) on every replica of one deployment."""
    try:
        answers = await handle.broadcast(method).results_async(timeout_s=timeout_s, return_exceptions=True)
    except Exception as exc:  # timed out or no replica: reported, the caller decides
        return [_failed(deployment, f"no answer ({type(exc).__name__})")]
    return [
        a if isinstance(a, RefreshOutcome) else _failed(deployment, f"replica failed ({type(a).__name__})")
        for a in answers
    ]


async def reload_models(models: Mapping[str, DeploymentHandle]) -> list[RefreshOutcome]:
    """Every replica of every model deployment re-resolves the alias now and loads what it points at."""
    answers = await asyncio.gather(*(broadcast_reload(h, name, "reload") for name, h in models.items()))
    return [outcome for answer in answers for outcome in answer]


async def reload_graph(
    models: Mapping[str, DeploymentHandle],
    ingress: tuple[str, DeploymentHandle],
    served_version: Callable[[], str],
) -> tuple[int, ReloadResponse]:
    """Models first, then every ingress replica: the ingresses pin batches to their version, so switching
    them last means the models already hold the new version and no request waits for a load."""
    outcomes = await reload_models(models)
    outcomes += await broadcast_reload(ingress[1], ingress[0], "reload_bundle")
    return summarize(served_version(), outcomes)


def admin_router(
    admin_keys: Sequence[str], reload: Callable[[], Awaitable[tuple[int, ReloadResponse]]]
) -> APIRouter:
    """The admin routes. The admin key travels in the same X-API-Key header as API keys (one header for
    clients and proxies to protect); GuardMiddleware lets admin keys pass, this dependency demands one."""
    encoded = tuple(k.encode("utf-8") for k in admin_keys if k)
    scheme = APIKeyHeader(
        name=API_KEY_HEADER, auto_error=False, scheme_name="AdminKey", description="One of FRAUD_ADMIN_KEYS"
    )

    async def require_admin_key(key: str | None = Security(scheme)) -> None:
        if not keys_match(key, encoded):  # constant time (hmac.compare_digest); the key is never logged
            raise HTTPException(403, detail=f"this route needs an admin key in the {API_KEY_HEADER} header")

    router = APIRouter(prefix=ADMIN_PREFIX, tags=["admin"], dependencies=[Depends(require_admin_key)])
    responses: dict[int | str, dict[str, Any]] = {
        401: {"description": "Missing or unknown key"},
        403: {"description": "A valid API key, but not an admin key"},
        409: {"model": ReloadResponse, "description": "The alias points at a refused bundle; old one serves"},
        503: {"model": ReloadResponse, "description": "A replica did not answer, or replicas disagree"},
    }

    @router.post("/reload", response_model=ReloadResponse, responses=responses)
    async def reload_now() -> JSONResponse:
        """Every replica of both model deployments and of the ingress re-resolves the model alias now;
        a bundle that fails its checks is refused and the old one keeps serving. Returns what is served."""
        code, report = await reload()
        return JSONResponse(status_code=code, content=report.model_dump())

    return router
