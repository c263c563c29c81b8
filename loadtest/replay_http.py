"""HTTP side of the replay: request bodies and a keep-alive async client for the batch routes, retrying."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, Literal

import httpx
import numpy as np
import numpy.typing as npt
import orjson
import pandas as pd
from pydantic import BaseModel, ValidationError

SCORE_PATH = "/v1/score/batch"
FEEDBACK_PATH = "/v1/feedback/batch"
# Worth another try: overload, a proxy or replica restarting. Anything else (401, 422, 500) is reported.
RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
Payload = dict[str, Any]


def iso_ms(ms: npt.NDArray[np.int64]) -> list[str]:
    """RFC 3339 UTC strings with milliseconds, the exact instants of epoch-ms values."""
    text = np.datetime_as_string(np.asarray(ms, dtype=np.int64).astype("datetime64[ms]"), unit="ms")
    return [f"{s}Z" for s in text.tolist()]


def _optional(column: pd.Series) -> list[object]:
    return column.astype(object).where(column.notna(), None).tolist()


class TransactionPayloads:
    """Request bodies built a batch at a time from column lists (500k dicts at once would waste memory)."""

    _OPTIONAL = ("currency", "merchant_category", "channel", "lat", "lon")

    def __init__(self, frame: pd.DataFrame, ts_ms: npt.NDArray[np.int64]) -> None:
        self._required = {
            "transaction_id": frame["transaction_id"].astype(str).tolist(),
            "timestamp": iso_ms(ts_ms),
            "customer_id": frame["customer_id"].astype(str).tolist(),
            "merchant_id": frame["merchant_id"].astype(str).tolist(),
            "amount": frame["amount"].astype(float).tolist(),
        }
        self._optional = {c: _optional(frame[c]) for c in self._OPTIONAL if c in frame.columns}

    def batch(self, start: int, stop: int) -> list[Payload]:
        bodies: list[Payload] = []
        for i in range(start, stop):
            body: Payload = {name: values[i] for name, values in self._required.items()}
            for name, values in self._optional.items():
                if values[i] is not None:
                    body[name] = values[i]
            bodies.append(body)
        return bodies


class ReplayError(RuntimeError):
    """The API refused the replay or kept failing; the message says which request and why."""


class ScoredRow(BaseModel):
    """The part of a ScoreResponse the replay keeps (the rest of the body is ignored, not validated)."""

    transaction_id: str
    fraud_probability: float
    decision: Literal["approve", "review", "decline"]
    degraded: bool


class _ScoreReply(BaseModel):
    results: list[ScoredRow]


class _FeedbackStatus(BaseModel):
    transaction_id: str
    status: str


class _FeedbackReply(BaseModel):
    results: list[_FeedbackStatus]
    unknown: list[str] = []  # ids the store never scored: their labels were not stored


def retry_delays(attempts: int, first_s: float, cap_s: float = 5.0) -> list[float]:
    """Sleep before each retry: doubling from `first_s`, at most `cap_s`; `attempts` counts the first try."""
    return [min(first_s * 2**k, cap_s) for k in range(max(attempts - 1, 0))]


def _excerpt(body: bytes, limit: int = 400) -> str:
    text = body.decode("utf-8", errors="replace")
    return text if len(text) <= limit else text[:limit] + "..."


class ReplayClient:
    """One pooled HTTP/1.1 client; every request is idempotent on the server, so retrying is safe."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        connections: int = 4,
        timeout_s: float = 120.0,
        attempts: int = 6,
        first_retry_s: float = 0.25,
    ) -> None:
        headers = {"content-type": "application/json"}
        if api_key:
            headers["X-API-Key"] = api_key
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )
        self._delays = retry_delays(attempts, first_retry_s)
        self.retries = 0

    async def _post(self, path: str, body: bytes, what: str) -> bytes:
        for attempt in range(len(self._delays) + 1):
            problem: str
            try:
                response = await self._client.post(path, content=body)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    return response.content
                problem = f"HTTP {response.status_code}: {_excerpt(response.content)}"
                if response.status_code not in RETRY_STATUSES:
                    raise ReplayError(f"POST {path} ({what}) was refused with {problem}")
            if attempt == len(self._delays):
                raise ReplayError(
                    f"POST {path} ({what}) failed after {attempt + 1} attempts; last: {problem}"
                )
            self.retries += 1
            await asyncio.sleep(self._delays[attempt])
        raise AssertionError("unreachable")  # the loop either returns or raises

    async def score(self, transactions: list[Payload]) -> list[ScoredRow]:
        """Scores in request order; refuses an answer whose ids do not match what was sent."""
        what = f"{len(transactions)} transactions from {transactions[0]['transaction_id']}"
        raw = await self._post(SCORE_PATH, orjson.dumps({"transactions": transactions}), what)
        try:
            rows = _ScoreReply.model_validate_json(raw).results
        except ValidationError as exc:
            raise ReplayError(f"POST {SCORE_PATH} ({what}) answered an unexpected body: {exc}") from None
        sent = [t["transaction_id"] for t in transactions]
        if [r.transaction_id for r in rows] != sent:
            by_id = {r.transaction_id: r for r in rows}
            missing = [i for i in sent if i not in by_id]
            if missing:
                raise ReplayError(
                    f"POST {SCORE_PATH} ({what}) left out {len(missing)} ids, e.g. {missing[0]!r}"
                )
            rows = [by_id[i] for i in sent]
        return rows

    async def feedback(self, labels: list[Payload]) -> Counter[str]:
        """Sends labels; returns how many came back with each status (recorded, unchanged, unknown, ...)."""
        what = f"{len(labels)} labels from {labels[0]['transaction_id']}"
        raw = await self._post(FEEDBACK_PATH, orjson.dumps({"labels": labels}), what)
        try:
            statuses = _FeedbackReply.model_validate_json(raw)
        except ValidationError:
            # The status breakdown is informational; a 200 means the labels were taken.
            return Counter({"accepted": len(labels)})
        counts = Counter(s.status for s in statuses.results)
        if statuses.unknown:
            counts["unknown"] += len(statuses.unknown)
        return counts

    async def aclose(self) -> None:
        await self._client.aclose()
