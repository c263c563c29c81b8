"""The Redis online feature store: one Lua call per transaction or label, pipelined per batch.

Why one EVALSHA per event inside one pipeline rather than one script call for a whole batch: each call
declares exactly the keys of its own transaction (KEYS), Redis runs it atomically so replicas never see
half an update, other clients interleave between transactions instead of waiting for a batch of 256, and
the whole batch still costs one network round trip. Every call is idempotent by transaction_id, so
resending a pipeline (after a timeout, a NOSCRIPT or a crash) is always safe.

`OnlineFeatureStore` is the asyncio client the serving graph uses; `SyncOnlineFeatureStore` is its
blocking twin for bulk loads (train.materialize). Both send the same script text with the same encoding.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, NamedTuple

import numpy as np
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from serve_app.features.contract import DAY_MS, LABEL_WINDOWS_MS, RAW_NAMES, RETENTION_MS, WINDOWS_MS
from serve_app.features.derive import FloatArray
from serve_app.schemas import Transaction

logger = logging.getLogger(__name__)

KEY_TTL_MS = RETENTION_MS + DAY_MS  # wall-clock lifetime of every key, refreshed on each write
_MEMBER_SEPARATOR = "|"
Call = tuple[list[str], list[str]]  # (KEYS, ARGV) of one EVALSHA


class OnlineStoreError(RuntimeError):
    """Redis is unreachable, timed out, or refused a call; the caller decides whether to degrade."""


@cache
def lua_source() -> str:
    """online.lua behind the contract's constants; read on first use (no file access at import time)."""
    widths = list(WINDOWS_MS.values())
    if widths != sorted(set(widths)) or widths[-1] != RETENTION_MS:
        # The script trims the history to the widest window: every window must fit inside the retention.
        raise RuntimeError("online.lua needs WINDOWS_MS strictly ascending and ending at RETENTION_MS")
    constants = (
        f"local RETENTION_MS = {RETENTION_MS}\n"
        f"local WINDOWS_MS = {{{', '.join(map(str, widths))}}}\n"
        f"local LABEL_WINDOWS_MS = {{{', '.join(map(str, LABEL_WINDOWS_MS.values()))}}}\n"
        f"local KEY_TTL_MS = '{KEY_TTL_MS}'\n"
    )
    body = resources.files("serve_app.features").joinpath("online.lua").read_text(encoding="utf-8")
    return constants + body


@cache
def lua_sha() -> str:
    return hashlib.sha1(lua_source().encode("utf-8"), usedforsecurity=False).hexdigest()


class StoreEvent(NamedTuple):
    """What the store needs from one transaction."""

    transaction_id: str
    ts_ms: int
    customer_id: str
    merchant_id: str
    amount: float
    lat: float | None
    lon: float | None

    @classmethod
    def from_transaction(cls, t: Transaction) -> StoreEvent:
        return cls(t.transaction_id, t.timestamp_ms, t.customer_id, t.merchant_id, t.amount, t.lat, t.lon)


class LabelEvent(NamedTuple):
    """A fraud (or genuine) verdict on a transaction, known from `labelled_at_ms` on."""

    transaction_id: str
    is_fraud: bool
    labelled_at_ms: int


class KeyedLabel(NamedTuple):
    """A label whose transaction's customer and merchant are already known (bulk loads from a file)."""

    label: LabelEvent
    customer_id: str
    merchant_id: str


@dataclass(frozen=True)
class KeySchema:
    """Redis key names; one prefix per deployment so several stores can share a server."""

    prefix: str = "fraud:"

    def customer(self, customer_id: str) -> str:
        return f"{self.prefix}cust:{customer_id}"

    def customer_sums(self, customer_id: str) -> str:
        return f"{self.prefix}cust_sum:{customer_id}"

    def customer_located(self, customer_id: str) -> str:
        return f"{self.prefix}cust_geo:{customer_id}"

    def customer_at_merchant(self, customer_id: str, merchant_id: str) -> str:
        # '|' never occurs in an id (_check_id), so the pair cannot be read two ways.
        return f"{self.prefix}cust_merch:{customer_id}{_MEMBER_SEPARATOR}{merchant_id}"

    def customer_labels(self, customer_id: str) -> str:
        return f"{self.prefix}cust_lbl:{customer_id}"

    def merchant(self, merchant_id: str) -> str:
        return f"{self.prefix}merch:{merchant_id}"

    def merchant_labels(self, merchant_id: str) -> str:
        return f"{self.prefix}merch_lbl:{merchant_id}"

    def transaction(self, transaction_id: str) -> str:
        return f"{self.prefix}tx:{transaction_id}"


def _check_id(field: str, value: str) -> str:
    if not isinstance(value, str) or not value or _MEMBER_SEPARATOR in value:
        raise ValueError(f"{field} must be a non-empty string without {_MEMBER_SEPARATOR!r}, got {value!r}")
    return value


def transaction_call(keys: KeySchema, ev: StoreEvent) -> Call:
    """KEYS and ARGV of one transaction; floats travel as repr() so Lua's tonumber() reads them exactly."""
    txid = _check_id("transaction_id", ev.transaction_id)
    customer = _check_id("customer_id", ev.customer_id)
    merchant = _check_id("merchant_id", ev.merchant_id)
    amount = float(ev.amount)
    if not (math.isfinite(amount) and amount > 0):
        raise ValueError(f"amount of transaction {txid} must be a positive finite number, got {ev.amount!r}")
    located = ev.lat is not None and ev.lon is not None and math.isfinite(ev.lat) and math.isfinite(ev.lon)
    lat = repr(float(ev.lat)) if located and ev.lat is not None else ""
    lon = repr(float(ev.lon)) if located and ev.lon is not None else ""
    # The event text doubles as the customer zset member, so the script stores it without rebuilding it.
    event = _MEMBER_SEPARATOR.join((txid, str(int(ev.ts_ms)), repr(amount), merchant, lat, lon))
    return (
        [
            keys.customer(customer),
            keys.merchant(merchant),
            keys.transaction(txid),
            keys.customer_labels(customer),
            keys.merchant_labels(merchant),
            keys.customer_sums(customer),
            keys.customer_located(customer),
            keys.customer_at_merchant(customer, merchant),
        ],
        ["tx", event, customer],
    )


def label_call(keys: KeySchema, label: LabelEvent, customer_id: str, merchant_id: str) -> Call:
    txid = _check_id("transaction_id", label.transaction_id)
    return (
        [keys.transaction(txid), keys.customer_labels(customer_id), keys.merchant_labels(merchant_id)],
        [
            "label",
            txid,
            "1" if label.is_fraud else "0",
            str(int(label.labelled_at_ms)),
            customer_id,
            merchant_id,
        ],
    )


def parse_raw(text: str) -> list[float]:
    """The script's comma-joined aggregates; '' is NaN (no such event)."""
    values = [float(v) if v else math.nan for v in text.split(",")]
    if len(values) != len(RAW_NAMES):
        raise OnlineStoreError(f"store returned {len(values)} aggregates, the contract has {len(RAW_NAMES)}")
    return values


def raw_columns(rows: Sequence[Sequence[float]]) -> dict[str, FloatArray]:
    """Per-event aggregate rows -> RAW_NAMES -> float64 arrays in batch order."""
    matrix = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(RAW_NAMES))
    return {name: matrix[:, i].copy() for i, name in enumerate(RAW_NAMES)}


def _transaction_result(ev: StoreEvent, reply: Any) -> tuple[str, list[float]]:
    status, text = reply
    if status == "conflict":
        logger.warning("transaction %s was sent again with other content; kept the first", ev.transaction_id)
    return str(status), parse_raw(str(text))


def _check_replies(replies: list[Any]) -> bool:
    """True if the script must be loaded and the pipeline resent; raises on any other error reply."""
    if any(isinstance(r, NoScriptError) for r in replies):
        return True
    for reply in replies:
        if isinstance(reply, Exception):
            raise OnlineStoreError(f"online store call failed: {reply}")
    return False


def _label_lookups(keys: KeySchema, labels: Sequence[LabelEvent]) -> list[str]:
    return [keys.transaction(_check_id("transaction_id", label.transaction_id)) for label in labels]


def _label_calls(
    keys: KeySchema, labels: Sequence[LabelEvent], owners: Sequence[Sequence[str | None]]
) -> dict[int, Call]:
    """Calls for labels whose transaction exists; owners are (customer_id, merchant_id) per label."""
    return {
        i: label_call(keys, label, str(customer), str(merchant))
        for i, (label, (customer, merchant)) in enumerate(zip(labels, owners, strict=True))
        if customer is not None and merchant is not None
    }


class OnlineFeatureStore:
    """Asyncio client for the serving path; connects on first use. Use one instance per event loop."""

    def __init__(self, redis_url: str, *, timeout_s: float = 0.05, key_prefix: str = "fraud:") -> None:
        self._redis_url = redis_url
        self._timeout_s = timeout_s
        self.keys = KeySchema(key_prefix)
        self._client: aioredis.Redis | None = None

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            self._client = aioredis.Redis.from_url(
                self._redis_url,
                socket_timeout=self._timeout_s,
                # A first connect (TLS, DNS) may take longer than a query; it happens once per replica.
                socket_connect_timeout=max(self._timeout_s, 1.0),
                decode_responses=True,
                # One immediate retry after a dropped connection: safe, every call is idempotent. Not after
                # a timeout: a store that is late now is late for the resend too, and waiting twice held
                # every request of the batch (and its slot at the edge) twice as long (loadtest.chaos).
                retry=AsyncRetry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            )
        return self._client

    async def _evalsha_all(self, calls: Sequence[Call]) -> list[Any]:
        client = self._redis()
        try:
            for _attempt in range(2):
                pipe = client.pipeline(transaction=False)
                for call_keys, argv in calls:
                    pipe.evalsha(lua_sha(), len(call_keys), *call_keys, *argv)
                replies: list[Any] = await pipe.execute(raise_on_error=False)
                if not _check_replies(replies):
                    return replies
                await client.script_load(lua_source())
        except RedisError as exc:
            raise OnlineStoreError(f"online store unavailable: {exc}") from exc
        raise OnlineStoreError("the online store keeps forgetting its script (SCRIPT FLUSH in a loop?)")

    async def fetch_and_update(self, events: Sequence[StoreEvent]) -> dict[str, np.ndarray]:
        """Raw aggregates as they were before each event (batch order), then each event is recorded."""
        if not events:
            return raw_columns([])
        replies = await self._evalsha_all([transaction_call(self.keys, ev) for ev in events])
        return raw_columns([_transaction_result(ev, r)[1] for ev, r in zip(events, replies, strict=True)])

    async def apply_labels(self, labels: Sequence[LabelEvent]) -> list[str]:
        """Per label: 'recorded' | 'unchanged' | 'corrected' | 'unknown' (no such transaction)."""
        if not labels:
            return []
        client = self._redis()
        try:
            pipe = client.pipeline(transaction=False)
            for key in _label_lookups(self.keys, labels):
                pipe.hmget(key, ["c", "m"])
            owners = await pipe.execute()
        except RedisError as exc:
            raise OnlineStoreError(f"online store unavailable: {exc}") from exc
        calls = _label_calls(self.keys, labels, owners)
        replies = await self._evalsha_all(list(calls.values())) if calls else []
        answers = dict(zip(calls, replies, strict=True))
        return [str(answers.get(i, "unknown")) for i in range(len(labels))]

    async def ping(self) -> bool:
        try:
            return bool(await self._redis().ping())
        except (RedisError, OSError):
            return False

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class SyncOnlineFeatureStore:
    """Blocking twin for bulk loads and tools: same script, same keys, same encoding."""

    def __init__(self, redis_url: str, *, timeout_s: float = 10.0, key_prefix: str = "fraud:") -> None:
        self.keys = KeySchema(key_prefix)
        self._client = redis.Redis.from_url(
            redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, decode_responses=True
        )

    def _evalsha_all(self, calls: Sequence[Call]) -> list[Any]:
        try:
            for _attempt in range(2):
                pipe = self._client.pipeline(transaction=False)
                for call_keys, argv in calls:
                    pipe.evalsha(lua_sha(), len(call_keys), *call_keys, *argv)
                replies: list[Any] = pipe.execute(raise_on_error=False)
                if not _check_replies(replies):
                    return replies
                self._client.script_load(lua_source())
        except RedisError as exc:
            raise OnlineStoreError(f"online store unavailable: {exc}") from exc
        raise OnlineStoreError("the online store keeps forgetting its script (SCRIPT FLUSH in a loop?)")

    def fetch_and_update(self, events: Sequence[StoreEvent]) -> dict[str, np.ndarray]:
        """As OnlineFeatureStore.fetch_and_update, blocking."""
        if not events:
            return raw_columns([])
        replies = self._evalsha_all([transaction_call(self.keys, ev) for ev in events])
        return raw_columns([_transaction_result(ev, r)[1] for ev, r in zip(events, replies, strict=True)])

    def apply_labels(self, labels: Sequence[LabelEvent]) -> list[str]:
        """As OnlineFeatureStore.apply_labels, blocking."""
        if not labels:
            return []
        try:
            pipe = self._client.pipeline(transaction=False)
            for key in _label_lookups(self.keys, labels):
                pipe.hmget(key, ["c", "m"])
            owners = pipe.execute()
        except RedisError as exc:
            raise OnlineStoreError(f"online store unavailable: {exc}") from exc
        calls = _label_calls(self.keys, labels, owners)
        answers = dict(zip(calls, self._evalsha_all(list(calls.values())) if calls else [], strict=True))
        return [str(answers.get(i, "unknown")) for i in range(len(labels))]

    def replay(self, items: Sequence[StoreEvent | KeyedLabel]) -> list[str]:
        """Transactions and labels in the given (event-time) order, one pipeline; a status per item.

        Transactions answer 'new' | 'dup' | 'conflict', labels as in apply_labels. A label may follow its
        own transaction in the same call because Redis runs a pipeline's scripts in order.
        """
        calls: list[Call] = []
        for item in items:
            if isinstance(item, KeyedLabel):
                calls.append(label_call(self.keys, item.label, item.customer_id, item.merchant_id))
            else:
                calls.append(transaction_call(self.keys, item))
        replies = self._evalsha_all(calls) if calls else []
        # A transaction replies [status, aggregates]; a bulk load wants only the status.
        return [
            str(reply if isinstance(item, KeyedLabel) else reply[0])
            for item, reply in zip(items, replies, strict=True)
        ]

    def ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except (RedisError, OSError):
            return False

    def close(self) -> None:
        self._client.close()
