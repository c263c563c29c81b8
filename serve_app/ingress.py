"""Ingress deployment: the HTTP API, request batching, and one trip through the graph per batch."""

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Depends, FastAPI, HTTPException
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from serve_app import metrics
from serve_app.admin import ReloadResponse, admin_router, reload_graph
from serve_app.bundle import ModelBundle
from serve_app.feature_fetcher import StoreUnavailableError
from serve_app.http_api import API_KEY_HEADER, GuardMiddleware, StrictJSONRoute, install_error_handlers
from serve_app.log_redaction import install_record_redaction
from serve_app.models import DEFAULT_POLL_INTERVAL_S, BundleLoader, replica_name
from serve_app.reloader import (
    AliasPoller,
    ModelReloader,
    RefreshOutcome,
    VersionUnavailableError,
    run_pinned,
)
from serve_app.rules import TEXT_FIELDS
from serve_app.schemas import (
    MAX_BATCH,
    BatchFeedbackRequest,
    BatchScoreRequest,
    BatchScoreResponse,
    Feedback,
    FeedbackResponse,
    ScoreResponse,
    Transaction,
)
from serve_app.scoring import RuleVerdicts, VersionMismatchError, score_batch
from serve_app.settings import get_settings
from serve_app.stages import FusedSpec, LocalStages, RemoteStages

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Two batches in flight: one is waiting on Redis or a model while the next one fills up.
MAX_CONCURRENT_BATCHES = 2
READY_TIMEOUT_S = 2.0
# What a 503 tells the client: try again in a second (a replica restarting, a queue full, a store blip).
RETRY_AFTER = {"Retry-After": "1"}
# A batch request may take longer than one transaction: this many transactions per extra deadline.
BATCH_DEADLINE_SCALE = 100


class IngressUserConfig(BaseModel):
    """Batching knobs, changeable at run time through Serve's user_config."""

    model_config = ConfigDict(extra="forbid", strict=True)

    max_batch_size: int = Field(32, ge=1, le=MAX_BATCH)
    batch_wait_timeout_s: float = Field(0.002, ge=0.0, le=1.0)
    model_poll_interval_s: float = Field(
        DEFAULT_POLL_INTERVAL_S, ge=0.0, le=86_400.0, description="Check the model alias this often; 0: never"
    )
    rules: list[dict[str, Any]] | None = Field(
        None, description="Fused topology only: replaces the rule document (as RuleEngine's user_config)"
    )


class BatchFeedbackResponse(BaseModel):
    results: list[FeedbackResponse]
    unknown: list[str] = Field(
        description="transaction ids that were never scored; their labels were not stored"
    )


class ReadyResponse(BaseModel):
    status: Literal["ready", "not_ready"]
    model_version: str | None
    store: Literal["ok", "unreachable", "unknown"]
    models: Literal["ok", "unavailable", "version_split"]


class GraphUnavailableError(RuntimeError):
    """A downstream step cannot answer right now (a model reload half-way); the client may retry."""


@serve.deployment
@serve.ingress()
class Ingress:
    """Validates and authenticates requests, batches them, and drives fetcher -> models + rules -> scoring."""

    def __init__(
        self,
        fetcher: DeploymentHandle | None,
        lr_model: DeploymentHandle | None,
        xgb_model: DeploymentHandle | None,
        rule_engine: DeploymentHandle | None,
        loader: BundleLoader,
        model_alias: str,
        max_body_bytes: int,
        request_deadline_s: float = 2.0,
        fused: FusedSpec | None = None,
    ) -> None:
        """Graph topology: the four stage handles. Fused: no handles, `fused` says how to build the stages."""
        self.stages: RemoteStages | LocalStages
        if fused is not None:
            self.stages = LocalStages(fused)
        elif fetcher and lr_model and xgb_model and rule_engine:
            self.stages = RemoteStages(fetcher, lr_model, xgb_model, rule_engine)
        else:
            raise ValueError("Ingress needs either all four stage handles or a FusedSpec")
        self.loader = loader
        self.model_alias = model_alias
        self.max_body_bytes = max_body_bytes
        self.request_deadline_s = request_deadline_s
        # The ensemble data (weights, calibration, thresholds, fill values) of the version each batch is
        # pinned to; the models are asked for exactly that version (see run_pinned).
        self.reloader = ModelReloader(
            loader,
            model_alias,
            name=replica_name("Ingress"),
            # Fused, the ingress is the model server: its swaps are what the model-version gauge reports.
            on_swap=metrics.set_model_version if fused is not None else None,
        )
        if fused is not None:
            metrics.set_model_version(self.reloader.bundle.version)
        self.poller = AliasPoller(self._follow_alias, self.reloader.name)
        # Keys come from this replica's environment (runtime_env), never from args that Serve displays.
        settings = get_settings()
        self.api_keys = settings.api_key_list()
        self.admin_keys = settings.admin_key_list()
        install_record_redaction([*self.api_keys, *self.admin_keys])
        if not self.api_keys:
            logger.warning("FRAUD_API_KEYS is empty: every route except health and docs will answer 401")

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = IngressUserConfig.model_validate(user_config)
        if config.rules is not None:
            if not isinstance(self.stages, LocalStages):
                raise ValueError("rules go in the RuleEngine's user_config in the graph topology")
            self.stages.set_rules({"rules": config.rules})
        self.poller.set_interval(config.model_poll_interval_s)  # async: the poller runs on this loop
        self._score_batched.set_max_batch_size(config.max_batch_size)  # type: ignore[attr-defined]
        self._score_batched.set_batch_wait_timeout_s(config.batch_wait_timeout_s)  # type: ignore[attr-defined]

    # ---- the graph ---------------------------------------------------------------------------------

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002, max_concurrent_batches=MAX_CONCURRENT_BATCHES)
    async def _score_batched(self, transactions: list[Transaction]) -> list[ScoreResponse]:
        return await self.score(transactions)

    async def _follow_alias(self) -> None:
        """Poll tick. When the alias moved, every model replica loads the new bundle first and this replica
        switches after, so batches pinned to the new version find it already held."""
        if await asyncio.to_thread(self.reloader.pending_version) is None:
            return
        await self.stages.reload_models()
        await asyncio.to_thread(self.reloader.refresh)

    async def reload_bundle(self) -> RefreshOutcome:
        """This replica's part of POST /v1/admin/reload (broadcast to every ingress replica)."""
        return await asyncio.to_thread(self.reloader.refresh, retry_refused=True)

    async def reload_graph(self) -> tuple[int, ReloadResponse]:
        """POST /v1/admin/reload: every model and ingress replica re-resolves the alias now."""
        context = serve.get_replica_context()
        return await reload_graph(
            self.stages.model_handles(),
            (context.deployment, serve.get_deployment_handle(context.deployment, context.app_name)),
            lambda: self.reloader.bundle.version,
        )

    async def score(self, transactions: list[Transaction]) -> list[ScoreResponse]:
        """One trip through the graph for a whole batch; a replica that died on the way costs one resend.

        Resending is safe because the store records each transaction_id once and answers a repeat with the
        features it computed the first time. A full queue downstream is not retried here: that is overload,
        and the client is told to come back (503 + Retry-After) instead of piling on.
        """
        metrics.observe_batch_size("Ingress", len(transactions))
        for attempt in (1, 2):
            try:
                return await self._score_once(transactions)
            except RayActorError as exc:
                if attempt == 2:
                    raise GraphUnavailableError(
                        f"a downstream replica is unavailable ({type(exc).__name__})"
                    ) from None
                logger.warning("a downstream replica died (%s); resending the batch once", type(exc).__name__)
            except (BackPressureError, DeploymentUnavailableError) as exc:
                raise GraphUnavailableError(
                    f"the graph is overloaded or restarting ({type(exc).__name__})"
                ) from None
        raise AssertionError("unreachable")

    async def _score_once(self, transactions: list[Transaction]) -> list[ScoreResponse]:
        try:
            return await run_pinned(self.reloader, lambda bundle: self._score_pinned(transactions, bundle))
        except VersionUnavailableError:
            version = self.reloader.bundle.version
            raise GraphUnavailableError(
                f"the models cannot serve bundle {version} nor its predecessor"
            ) from None

    async def _score_pinned(
        self, transactions: list[Transaction], bundle: ModelBundle
    ) -> list[ScoreResponse]:
        """Everything from one bundle version: its fill values, both models pinned to it, its ensemble.

        No mixing: the models answer with exactly `bundle.version` or raise VersionUnavailableError (they
        keep recent versions and load a missing one by version), and score_batch checks it once more.
        """
        batch = await self.stages.fetch(transactions, bundle.history_fill)
        text = {name: [getattr(t, name) for t in transactions] for name in TEXT_FIELDS}
        (lr, xgb), outcomes = await asyncio.gather(
            self.stages.predict(batch.features, bundle),
            self.stages.evaluate(batch.features, batch.degraded, text),
        )
        verdicts = RuleVerdicts(hits=[o.hits for o in outcomes], actions=[o.action for o in outcomes])
        try:
            responses = score_batch(
                bundle,
                [t.transaction_id for t in transactions],
                batch.features,
                batch.degraded,
                lr,
                xgb,
                verdicts,
            )
        except VersionMismatchError as exc:
            raise GraphUnavailableError(str(exc)) from None
        metrics.record_scores(
            [r.decision for r in responses],
            [r.fraud_probability for r in responses],
            [r.rule_hits for r in responses],
            [r.degraded for r in responses],
            bundle.version,
        )
        return responses

    async def feedback(self, labels: list[Feedback]) -> list[str]:
        try:
            statuses = await self.stages.apply_labels(labels)
        except StoreUnavailableError as exc:
            raise HTTPException(503, detail=str(exc), headers=RETRY_AFTER) from None
        except (RayActorError, BackPressureError, DeploymentUnavailableError) as exc:
            # Not stored, so not acknowledged: the client resends (a repeated label is 'unchanged').
            detail = f"label not stored, the feature store is unavailable ({type(exc).__name__}); retry"
            raise HTTPException(503, detail=detail, headers=RETRY_AFTER) from None
        return statuses

    async def readiness(self) -> tuple[bool, ReadyResponse]:
        store: Literal["ok", "unreachable", "unknown"] = "unknown"
        models: Literal["ok", "unavailable", "version_split"] = "unavailable"
        try:
            store_ok, models_ok = await asyncio.wait_for(
                self.stages.probe(self.reloader.bundle.version), timeout=READY_TIMEOUT_S
            )
            store = "ok" if store_ok else "unreachable"
            models = "ok" if models_ok else "version_split"
        except Exception as exc:  # a replica down or slow is exactly what readiness reports
            logger.warning("readiness check failed: %s", type(exc).__name__)
        ready = store == "ok" and models == "ok"
        answer = ReadyResponse(
            status="ready" if ready else "not_ready",
            model_version=self.reloader.bundle.version,
            store=store,
            models=models,
        )
        return ready, answer

    async def _within_deadline(self, work: Awaitable[T], deadline_s: float) -> T:
        """A payment cannot wait: past the deadline the client gets a clear 504, never a hang."""
        try:
            return await asyncio.wait_for(work, deadline_s)
        except TimeoutError:
            detail = (
                f"not scored within {deadline_s:g} s; resend the same transaction_id (scoring is idempotent)"
            )
            raise HTTPException(504, detail=detail) from None
        except GraphUnavailableError as exc:
            raise HTTPException(503, detail=str(exc), headers=RETRY_AFTER) from None

    # ---- HTTP --------------------------------------------------------------------------------------

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Built in the replica after __init__, so routes and middleware close over this instance."""
        app = FastAPI(
            title="Fraud scorer",
            version="1",
            summary="Real-time payment fraud scoring: decision, calibrated probability and reasons.",
            redoc_url=None,
        )
        install_error_handlers(app)
        # Admin keys pass the guard too (one header); the admin routes then demand an admin key.
        keys = [*self.api_keys, *self.admin_keys]
        app.add_middleware(GuardMiddleware, api_keys=keys, max_body_bytes=self.max_body_bytes)
        # Declares the header in OpenAPI (the "Authorize" button in /docs); GuardMiddleware enforces it.
        api_key_scheme = APIKeyHeader(name=API_KEY_HEADER, auto_error=False)
        v1 = APIRouter(prefix="/v1", route_class=StrictJSONRoute, dependencies=[Depends(api_key_scheme)])
        unavailable: dict[int | str, dict[str, Any]] = {
            503: {"description": "Overloaded, or graph or store unavailable: retry after Retry-After seconds"}
        }
        late: dict[int | str, dict[str, Any]] = {
            504: {"description": "Not scored within the deadline: resend (scoring is idempotent)"}
        }
        errors: dict[int | str, dict[str, Any]] = {
            401: {"description": "Missing or wrong X-API-Key"},
            413: {"description": "Body too large"},
            415: {"description": "Body not sent as application/json"},
        }

        @v1.post("/score", responses={**errors, **unavailable, **late})
        async def score_one(transaction: Transaction) -> ScoreResponse:
            """Score one transaction (batched with concurrent requests on the way through the graph)."""
            result: ScoreResponse = await self._within_deadline(
                self._score_batched(transaction), self.request_deadline_s
            )
            return result

        @v1.post("/score/batch", responses={**errors, **unavailable, **late})
        async def score_many(request: BatchScoreRequest) -> BatchScoreResponse:
            """Score up to 1000 transactions, in order, as one batch through the graph."""
            scale = 1 + len(request.transactions) / BATCH_DEADLINE_SCALE
            results = await self._within_deadline(
                self.score(request.transactions), self.request_deadline_s * scale
            )
            return BatchScoreResponse(results=results)

        @v1.post("/feedback", responses={**errors, **unavailable, 404: {"description": "Never scored"}})
        async def feedback_one(label: Feedback) -> FeedbackResponse:
            """Record the true outcome of a scored transaction; it feeds merchant and customer features."""
            (status,) = await self.feedback([label])
            if status == "unknown":
                raise HTTPException(404, detail=f"transaction {label.transaction_id!r} was never scored")
            return FeedbackResponse(transaction_id=label.transaction_id, status=status)

        @v1.post("/feedback/batch", responses={**errors, **unavailable})
        async def feedback_many(request: BatchFeedbackRequest) -> BatchFeedbackResponse:
            """Record up to 1000 labels; ids never scored are listed under `unknown` and not stored."""
            statuses = await self.feedback(request.labels)
            pairs = list(zip(request.labels, statuses, strict=True))
            return BatchFeedbackResponse(
                results=[
                    FeedbackResponse(transaction_id=f.transaction_id, status=s)
                    for f, s in pairs
                    if s != "unknown"
                ],
                unknown=[f.transaction_id for f, s in pairs if s == "unknown"],
            )

        @app.get("/healthz")
        async def healthz() -> dict[str, str]:
            """Liveness: the process answers. No auth."""
            return {"status": "alive"}

        @app.get("/readyz", responses={503: {"model": ReadyResponse}})
        async def readyz() -> JSONResponse:
            """Readiness: models loaded in agreement and the feature store reachable. No auth."""
            ready, answer = await self.readiness()
            return JSONResponse(status_code=200 if ready else 503, content=answer.model_dump())

        app.include_router(v1)
        app.include_router(admin_router(self.admin_keys, self.reload_graph))
        return app
