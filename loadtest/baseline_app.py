"""The conventional baseline for the benchmark: one FastAPI + uvicorn process doing all the work per request.

Same JSON API as the graph (`POST /v1/score`, `POST /v1/score/batch`, `GET /healthz`, `GET /readyz`,
header `X-API-Key`), same store, bundle, rules and scoring code (via loadtest.pipeline). Run it with
`python -m loadtest.baseline_app --port 8100 --redis-url redis://127.0.0.1:PORT/0 [--bundle-dir DIR]`.
"""

from __future__ import annotations

import argparse
import hmac
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.responses import JSONResponse

from loadtest.pipeline import DEFAULT_RULES, AsyncStoreScorer, load_serving_bundle
from serve_app.rules import RuleSet
from serve_app.schemas import BatchScoreRequest, BatchScoreResponse, ScoreResponse, Transaction
from serve_app.settings import get_settings

logger = logging.getLogger(__name__)


def create_app(scorer: AsyncStoreScorer, api_keys: Sequence[str]) -> FastAPI:
    """The app around a ready scorer; with no API keys configured, every request is refused (401)."""
    keys = [k.encode() for k in api_keys]

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await scorer.aclose()

    def authorised(x_api_key: Annotated[str | None, Header()] = None) -> None:
        given = (x_api_key or "").encode()
        # compare_digest against every key: the time taken does not reveal which prefix matched.
        if not any([hmac.compare_digest(given, k) for k in keys]):
            raise HTTPException(status_code=401, detail="missing or unknown X-API-Key")

    app = FastAPI(title="fraud scorer (single-process baseline)", lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if await scorer.ready():
            return JSONResponse({"status": "ready", "model_version": scorer.bundle.version})
        return JSONResponse({"status": "feature store unreachable"}, status_code=503)

    @app.post("/v1/score", dependencies=[Depends(authorised)])
    async def score(transaction: Transaction) -> ScoreResponse:
        return (await scorer.score([transaction]))[0]

    @app.post("/v1/score/batch", dependencies=[Depends(authorised)])
    async def score_batch(request: BatchScoreRequest) -> BatchScoreResponse:
        return BatchScoreResponse(results=await scorer.score(request.transactions))

    return app


def build_app(
    redis_url: str,
    bundle_dir: Path | None = None,
    rules_path: Path = DEFAULT_RULES,
    api_keys: Sequence[str] = (),
) -> FastAPI:
    """Load the bundle (a directory, or the registry as the graph does) and the rules; wire the app."""
    scorer = AsyncStoreScorer(load_serving_bundle(bundle_dir), RuleSet.from_yaml(rules_path), redis_url)
    return create_app(scorer, list(api_keys) or get_settings().api_key_list())


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn  # only the command needs the server

    settings = get_settings()
    p = argparse.ArgumentParser(prog="python -m loadtest.baseline_app", description=__doc__)
    p.add_argument("--port", type=int, default=8100, help="port on 127.0.0.1")
    p.add_argument("--redis-url", default=settings.redis_url, help="feature store (default FRAUD_REDIS_URL)")
    p.add_argument(
        "--bundle-dir", type=Path, help="a saved bundle; default: the registry's FRAUD_MODEL_ALIAS"
    )
    p.add_argument("--rules", type=Path, default=DEFAULT_RULES, help="rule file (YAML)")
    args = p.parse_args(argv)
    if not args.redis_url:
        p.error("--redis-url (or FRAUD_REDIS_URL) is required")
    app = build_app(args.redis_url, args.bundle_dir, args.rules)
    # One worker, no access log: the conventional deployment the graph is compared with.
    uvicorn.run(app, host="127.0.0.1", port=args.port, workers=1, access_log=False, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
