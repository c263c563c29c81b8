"""Ingress deployment: the HTTP API, request batching, and one trip through the graph per batch."""

import asyncio
import logging
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app import metrics
from serve_app.bundle import ModelBundle
from serve_app.feature_fetcher import FeatureBatch, StoreUnavailableError
from serve_app.http_api import API_KEY_HEADER, GuardMiddleware, StrictJSONRoute, install_error_handlers
from serve_app.models import BundleLoader
from serve_app.rules import TEXT_FIELDS, RuleOutcome
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
from serve_app.scoring import ModelOutput, RuleVerdicts, VersionMismatchError, score_batch
from serve_app.settings import get_settings

logger = logging.getLogger(__name__)

# Two batches in flight: one is waiting on Redis or a model while the next one fills up.
MAX_CONCURRENT_BATCHES = 2
READY_TIMEOUT_S = 2.0


class IngressUserConfig(BaseModel):
    """Batching knobs, changeable at run time through Serve's user_config."""

    model_config = ConfigDict(extra="forbid", strict=True)

    max_batch_size: int = Field(32, ge=1, le=MAX_BATCH)
    batch_wait_timeout_s: float = Field(0.002, ge=0.0, le=1.0)


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
        fetcher: DeploymentHandle,
        lr_model: DeploymentHandle,
        xgb_model: DeploymentHandle,
        rule_engine: DeploymentHandle,
        loader: BundleLoader,
        model_alias: str,
        max_body_bytes: int,
    ) -> None:
        self.fetcher = fetcher
        self.lr_model = lr_model
        self.xgb_model = xgb_model
        self.rule_engine = rule_engine
        self.loader = loader
        self.model_alias = model_alias
        self.max_body_bytes = max_body_bytes
        self.bundle: ModelBundle = loader(model_alias)
        self.reload_lock = asyncio.Lock()
        # Keys come from this replica's environment (runtime_env), never from args that Serve displays.
        self.api_keys = get_settings().api_key_list()
        if not self.api_keys:
            logger.warning("FRAUD_API_KEYS is empty: every route except health and docs will answer 401")

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = IngressUserConfig.model_validate(user_config)
        self._score_batched.set_max_batch_size(config.max_batch_size)  # type: ignore[attr-defined]
        self._score_batched.set_batch_wait_timeout_s(config.batch_wait_timeout_s)  # type: ignore[attr-defined]

    # ---- the graph ---------------------------------------------------------------------------------

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002, max_concurrent_batches=MAX_CONCURRENT_BATCHES)
    async def _score_batched(self, transactions: list[Transaction]) -> list[ScoreResponse]:
        return await self.score(transactions)

    async def _predict_both(self, features: Any) -> tuple[ModelOutput, ModelOutput]:
        """Both models in parallel; a split answer (one replica reloaded first) is retried once."""
        for _attempt in range(2):
            lr, xgb = await asyncio.gather(
                self.lr_model.predict.remote(features), self.xgb_model.predict.remote(features)
            )
            if lr.version == xgb.version:
                return lr, xgb
        raise GraphUnavailableError(f"models disagree on the bundle version ({lr.version} vs {xgb.version})")

    async def _bundle_for(self, version: str) -> ModelBundle:
        """The ensemble data of `version`: the models moved on (hot reload), so this replica follows."""
        async with self.reload_lock:
            if self.bundle.version != version:
                bundle = await asyncio.to_thread(self.loader, self.model_alias)
                if bundle.version != version:
                    raise GraphUnavailableError(
                        f"models serve {version}, the registry gives {bundle.version}"
                    )
                self.bundle = bundle
            return self.bundle

    async def score(self, transactions: list[Transaction]) -> list[ScoreResponse]:
        """One trip through the graph for a whole batch: every hop carries all of it."""
        metrics.observe_batch_size("Ingress", len(transactions))
        batch: FeatureBatch = await self.fetcher.fetch.remote(transactions, self.bundle.history_fill)
        text = {name: [getattr(t, name) for t in transactions] for name in TEXT_FIELDS}
        rules_call = self.rule_engine.evaluate.remote(batch.features, batch.degraded, text)
        lr, xgb = await self._predict_both(batch.features)
        outcomes: list[RuleOutcome] = await rules_call
        bundle = self.bundle if self.bundle.version == lr.version else await self._bundle_for(lr.version)
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
            statuses: list[str] = await self.fetcher.apply_labels.remote(labels)
        except StoreUnavailableError as exc:
            raise HTTPException(503, detail=str(exc)) from None
        return statuses

    async def readiness(self) -> tuple[bool, ReadyResponse]:
        store: Literal["ok", "unreachable", "unknown"] = "unknown"
        models: Literal["ok", "unavailable", "version_split"] = "unavailable"
        try:
            store_ok, lr_version, xgb_version = await asyncio.wait_for(
                asyncio.gather(
                    self.fetcher.ping.remote(),
                    self.lr_model.version.remote(),
                    self.xgb_model.version.remote(),
                ),
                timeout=READY_TIMEOUT_S,
            )
            store = "ok" if store_ok else "unreachable"
            models = "ok" if lr_version == xgb_version else "version_split"
        except Exception as exc:  # a replica down or slow is exactly what readiness reports
            logger.warning("readiness check failed: %s", type(exc).__name__)
        ready = store == "ok" and models == "ok"
        answer = ReadyResponse(
            status="ready" if ready else "not_ready",
            model_version=self.bundle.version,
            store=store,
            models=models,
        )
        return ready, answer

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
        app.add_middleware(GuardMiddleware, api_keys=self.api_keys, max_body_bytes=self.max_body_bytes)
        # Declares the header in OpenAPI (the "Authorize" button in /docs); GuardMiddleware enforces it.
        api_key_scheme = APIKeyHeader(name=API_KEY_HEADER, auto_error=False)
        v1 = APIRouter(prefix="/v1", route_class=StrictJSONRoute, dependencies=[Depends(api_key_scheme)])
        unavailable: dict[int | str, dict[str, Any]] = {503: {"description": "Graph or store unavailable"}}
        errors: dict[int | str, dict[str, Any]] = {
            401: {"description": "Missing or wrong X-API-Key"},
            413: {"description": "Body too large"},
            415: {"description": "Body not sent as application/json"},
        }

        @v1.post("/score", responses={**errors, **unavailable})
        async def score_one(transaction: Transaction) -> ScoreResponse:
            """Score one transaction (batched with concurrent requests on the way through the graph)."""
            try:
                result: ScoreResponse = await self._score_batched(transaction)
            except GraphUnavailableError as exc:
                raise HTTPException(503, detail=str(exc)) from None
            return result

        @v1.post("/score/batch", responses={**errors, **unavailable})
        async def score_many(request: BatchScoreRequest) -> BatchScoreResponse:
            """Score up to 1000 transactions, in order, as one batch through the graph."""
            try:
                return BatchScoreResponse(results=await self.score(request.transactions))
            except GraphUnavailableError as exc:
                raise HTTPException(503, detail=str(exc)) from None

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
        return app
