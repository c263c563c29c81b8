"""Open-loop load for the fault scenarios, recording per request what a fault figure needs: when it was
meant to go, when it came back, the status, `Retry-After`, `degraded`, and whether a client retry saved it.

loadtest.httpload measures throughput; this driver keeps every outcome on a timeline, because a fault's
figures are about *when* (during the outage, after recovery). Only 127.0.0.1 targets; bounded in time.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit

import orjson

from loadtest.httpload import LOCAL_HOSTS, percentile
from serve_app.edge import SHED_DETAIL

STATUS_NO_ANSWER = 0  # timeout, refused or reset connection: no HTTP status at all
RETRYABLE = frozenset({STATUS_NO_ANSWER, 500, 502, 503, 504})
RETRY_PAUSE_S = 0.2  # without a Retry-After header
MAX_RETRY_PAUSE_S = 1.0


def retry_pause_s(retry_after: str | None) -> float:
    """How long a client waits before its one retry: the server's Retry-After (seconds), capped."""
    try:
        return min(MAX_RETRY_PAUSE_S, max(0.0, float(retry_after))) if retry_after else RETRY_PAUSE_S
    except ValueError:  # an HTTP-date or garbage: the default pause
        return RETRY_PAUSE_S


@dataclass(frozen=True)
class Outcome:
    """One request as the client saw it; times are seconds since the run started."""

    index: int  # which body was sent
    intended_s: float
    done_s: float
    status: int
    degraded: bool | None
    retry_after: str | None
    attempts: int
    first_status: int
    sent_s: float = math.nan  # when the first attempt actually left (later than intended if we lagged)
    first_source: str = ""  # for a first 503: "edge" (shed by the edge) or "serve" (Serve's own answer)
    source: str = ""  # the same for the last answer

    @property
    def latency_ms(self) -> float:
        """What the payment saw: from when it was due, so a late send counts (no coordinated omission)."""
        return (self.done_s - self.intended_s) * 1000.0

    @property
    def server_ms(self) -> float:
        """From the actual send: the service's own time, without the generator's lag."""
        return (self.done_s - self.sent_s) * 1000.0

    @property
    def lag_ms(self) -> float:
        """How late the generator sent it: on two shared cores it competes with the server for CPU."""
        return (self.sent_s - self.intended_s) * 1000.0


@dataclass(frozen=True)
class Fault:
    """Something done to the stack `at_s` seconds into a run (in a thread: it may block)."""

    at_s: float
    name: str
    action: Callable[[], object]


@dataclass
class Run:
    """All outcomes of one load step, in completion order, and when each fault's action had finished."""

    rate: float
    duration_s: float
    outcomes: list[Outcome] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)

    def between(self, start_s: float, end_s: float) -> list[Outcome]:
        return [o for o in self.outcomes if start_s <= o.intended_s < end_s]


def p99_ms(outcomes: Sequence[Outcome], status: int = 200, measure: str = "latency_ms") -> float:
    """p99 of `measure` (latency_ms, server_ms or lag_ms) over the outcomes with `status`."""
    values = [getattr(o, measure) / 1000.0 for o in outcomes if o.status == status]
    return percentile(values, 99) * 1000.0


def share(outcomes: Sequence[Outcome], predicate: Callable[[Outcome], bool]) -> float:
    """Percentage of outcomes for which `predicate` holds (NaN without outcomes)."""
    return 100.0 * sum(1 for o in outcomes if predicate(o)) / len(outcomes) if outcomes else math.nan


class TransactionFactory:
    """Unique, valid transactions over a fixed population; wall-clock event times (so windows move)."""

    def __init__(self, seed: int = 0, customers: int = 500, merchants: int = 100) -> None:
        self.rng = random.Random(seed)
        self.customers, self.merchants = customers, merchants
        self.counter = itertools.count()
        self.run_token = f"{seed}-{int(time.time())}"

    def payload(self, amount: float | None = None) -> dict[str, object]:
        n = next(self.counter)
        return {
            "transaction_id": f"chaos-{self.run_token}-{n}",
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "customer_id": f"cust-{self.rng.randrange(self.customers)}",
            "merchant_id": f"merch-{self.rng.randrange(self.merchants)}",
            "amount": round(amount if amount is not None else self.rng.lognormvariate(3.5, 1.0), 2),
            "channel": self.rng.choice(("pos", "online")),
        }

    def body(self) -> bytes:
        return orjson.dumps(self.payload())


class _Client:
    """One keep-alive HTTP/1.1 connection; reopened after any failure (never reused mid-answer)."""

    def __init__(self, host: str, port: int, headers: dict[str, str], timeout_s: float) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"{host}:{port}", **headers}.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        try:
            return await asyncio.wait_for(self._post(path, body), self.timeout_s)
        except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError):
            self.close()
            return STATUS_NO_ANSWER, {}, b""

    async def _post(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        request = f"POST {path} HTTP/1.1\r\n{self.head}Content-Type: application/json\r\n"
        self.writer.write(f"{request}Content-Length: {len(body)}\r\n\r\n".encode("latin-1") + body)
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)
        }
        if headers.get("transfer-encoding", "").lower() == "chunked":
            payload = b""
            while size := int((await self.reader.readuntil(b"\r\n")).strip() or b"0", 16):
                payload += (await self.reader.readexactly(size + 2))[:-2]
            await self.reader.readuntil(b"\r\n")
        else:
            payload = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def source_of_503(status: int, body: bytes) -> str:
    """Who refused: the edge's shed answer carries its own detail; anything else came from Serve."""
    if status != 503:
        return ""
    return "edge" if SHED_DETAIL.encode() in body else "serve"


def _degraded(status: int, body: bytes) -> bool | None:
    if status != 200:
        return None
    try:
        return bool(orjson.loads(body).get("degraded"))
    except (orjson.JSONDecodeError, AttributeError):
        return None


async def open_loop(
    base_url: str,
    api_key: str,
    rate: float,
    duration_s: float,
    make_body: Callable[[], bytes],
    *,
    path: str = "/v1/score",
    connections: int = 64,
    timeout_s: float = 5.0,
    retry_once: bool = False,
    faults: Sequence[Fault] = (),
) -> Run:
    """`rate` requests/s for `duration_s`, latency from the *intended* send time (no coordinated omission).

    With `retry_once`, a request that got no answer or a retryable status is sent once more, after
    `retry_pause_s`, with the same body (scoring is idempotent by transaction_id) - what a well-behaved
    payment client does.
    """
    parts = urlsplit(base_url)
    if parts.hostname not in LOCAL_HOSTS or parts.port is None:
        raise ValueError(f"chaos load only targets 127.0.0.1 with an explicit port, not {base_url!r}")
    total = max(1, int(rate * duration_s))
    bodies = [make_body() for _ in range(total)]  # built before the clock starts
    run = Run(rate, duration_s)
    next_index = 0
    t0 = time.perf_counter() + 0.05

    async def worker(client: _Client) -> None:
        nonlocal next_index
        while next_index < total:
            i = next_index
            next_index += 1
            intended = i / rate
            delay = t0 + intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = time.perf_counter() - t0
            status, headers, payload = await client.post(path, bodies[i])
            first, first_source, attempts = status, source_of_503(status, payload), 1
            if retry_once and status in RETRYABLE:
                # As a payment client does: after Retry-After (capped), else a short pause, so the retry
                # is not answered by the same dying replica the first attempt met.
                await asyncio.sleep(retry_pause_s(headers.get("retry-after")))
                status, headers, payload = await client.post(path, bodies[i])
                attempts = 2
            done = time.perf_counter() - t0
            run.outcomes.append(
                Outcome(
                    i,
                    intended,
                    done,
                    status,
                    _degraded(status, payload),
                    headers.get("retry-after"),
                    attempts,
                    first,
                    sent,
                    first_source,
                    source_of_503(status, payload),
                )
            )

    async def inject() -> None:
        for fault in sorted(faults, key=lambda f: f.at_s):
            await asyncio.sleep(max(0.0, t0 + fault.at_s - time.perf_counter()))
            await asyncio.to_thread(fault.action)
            run.marks[fault.name] = time.perf_counter() - t0

    headers = {"X-API-Key": api_key, "Connection": "keep-alive"}
    clients = [_Client(parts.hostname, parts.port, headers, timeout_s) for _ in range(connections)]
    bound = duration_s + 2 * timeout_s + 10.0
    try:
        await asyncio.wait_for(asyncio.gather(inject(), *(worker(c) for c in clients)), bound)
    except TimeoutError:
        pass  # unanswered requests are simply missing; callers count len(outcomes) against `total`
    finally:
        for client in clients:
            client.close()
    return run


def timeline(run: Run, bucket_s: float = 1.0) -> list[str]:
    """Per time bucket (by intended send time): answers by status, how many 200s were degraded, and the
    first status of those a client retry saved (first-STATUS)."""
    buckets: dict[int, dict[str, int]] = {}
    for o in run.outcomes:
        counts = buckets.setdefault(int(o.intended_s // bucket_s), {})
        key = "degraded" if o.degraded else str(o.status) + (f"-{o.source}" if o.source else "")
        counts[key] = counts.get(key, 0) + 1
        if o.attempts > 1:  # what the retry hid: the first attempt's status (and who sent a 503)
            first = f"first-{o.first_status}" + (f"-{o.first_source}" if o.first_source else "")
            counts[first] = counts.get(first, 0) + 1
    marks = {int(t // bucket_s): name for name, t in run.marks.items()}
    return [
        f"{b * bucket_s:6.1f}s {' '.join(f'{k}={v}' for k, v in sorted(buckets[b].items()))}"
        + (f"   <- {marks[b]}" if b in marks else "")
        for b in sorted(buckets)
    ]
