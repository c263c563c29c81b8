"""A cheap asyncio HTTP/1.1 keep-alive load generator: open-loop at a fixed rate, or closed-loop.

It shares the machine's cores with the server under test, so it does as little as possible per request:
request bytes are built before the clock starts, responses are parsed by httptools (C), and each worker
coroutine owns one connection. Open-loop latency is measured from the *intended* send time, so a server
that falls behind is charged for the queue it causes (no coordinated omission), as wrk2 does.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
ResponseCheck = Callable[[int, bytes], str | None]  # (status, body) -> what is wrong with it, or None


class HttpLoadError(RuntimeError):
    """The target cannot be reached at all (refused connection, bad URL)."""


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by the nearest-rank method; NaN without values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True)
class Target:
    host: str
    port: int

    @classmethod
    def from_url(cls, url: str, allow_remote: bool = False) -> Target:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise HttpLoadError(f"target {url!r} must be an http:// URL with a host")
        if parts.hostname not in LOCAL_HOSTS and not allow_remote:
            raise HttpLoadError(f"target host {parts.hostname!r} is not local (127.0.0.1/localhost)")
        return cls(parts.hostname, parts.port or 80)

    def request(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(body)}"]
        head.extend(f"{k}: {v}" for k, v in headers.items())
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class _Connection(asyncio.Protocol):
    """One keep-alive connection; `send` writes a request and waits for its complete response."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.body: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, but they have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._finish_with(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._finish_with(ConnectionError("connection closed by the server"))

    def _finish_with(self, exc: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.parser.get_status_code(), b"".join(self.body)))
        if not self.parser.should_keep_alive() and self.transport is not None:
            self.transport.close()

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        if self.transport is None or self.closed:
            raise ConnectionError("connection is not open")
        self.body = []
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()


async def _connect(target: Target) -> _Connection:
    loop = asyncio.get_running_loop()
    try:
        _, conn = await loop.create_connection(_Connection, target.host, target.port)
    except OSError as exc:
        raise HttpLoadError(f"cannot connect to {target.host}:{target.port}: {exc}") from None
    return conn


@dataclass
class LoadResult:
    """One load step: what was offered and what came back (latencies of successful requests, seconds)."""

    offered_rate: float | None  # requests/s for open loop, None for closed loop
    concurrency: int
    duration_s: float
    latencies_s: list[float]
    errors: int
    first_error: str | None = None

    @property
    def requests(self) -> int:
        return len(self.latencies_s) + self.errors

    @property
    def ok_rate(self) -> float:
        return len(self.latencies_s) / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def p(self, q: float) -> float:
        """Latency percentile in milliseconds."""
        return percentile(self.latencies_s, q) * 1000.0


class _Worker:
    """One connection, reopened after a failure; records into the shared result."""

    def __init__(self, target: Target, result: LoadResult, check: ResponseCheck, timeout_s: float) -> None:
        self.target, self.result, self.check, self.timeout_s = target, result, check, timeout_s
        self.conn: _Connection | None = None

    async def send(self, raw: bytes, started: float) -> None:
        try:
            if self.conn is None or self.conn.closed:
                self.conn = await _connect(self.target)
            status, body = await asyncio.wait_for(self.conn.send(raw), self.timeout_s)
            problem = self.check(status, body)
            ok = problem is None
        except (TimeoutError, ConnectionError, HttpLoadError, httptools.HttpParserError) as exc:
            ok, problem = False, f"{type(exc).__name__}: {exc}"
            if self.conn is not None:
                self.conn.close()
            self.conn = None  # a timed-out connection may still deliver the old answer: never reuse it
        if ok:
            self.result.latencies_s.append(time.perf_counter() - started)
        else:
            self.result.errors += 1
            if self.result.first_error is None:
                self.result.first_error = problem

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


async def open_loop(
    target: Target,
    requests: Sequence[bytes],
    rate: float,
    check: ResponseCheck,
    connections: int = 64,
    timeout_s: float = 5.0,
) -> LoadResult:
    """Send `requests` at `rate`/s on up to `connections` keep-alive connections; latency from schedule.

    Bounded: the step lasts len(requests)/rate seconds plus at most `timeout_s` for the last answers.
    """
    if rate <= 0 or not requests:
        raise ValueError("open_loop needs a positive rate and at least one request")
    duration = len(requests) / rate
    result = LoadResult(rate, connections, duration, [], 0)
    next_index = 0
    t0 = time.perf_counter() + 0.05

    async def run(worker: _Worker) -> None:
        nonlocal next_index
        while next_index < len(requests):
            i = next_index
            next_index += 1
            intended = t0 + i / rate
            delay = intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await worker.send(requests[i], intended)

    workers = [_Worker(target, result, check, timeout_s) for _ in range(connections)]
    try:
        await asyncio.wait_for(
            asyncio.gather(*(run(w) for w in workers)), duration + timeout_s + 5.0 + len(requests) * 1e-4
        )
    except TimeoutError:
        result.errors += len(requests) - result.requests  # never answered within the step's bound
        result.first_error = result.first_error or "step did not finish within its time bound"
    finally:
        for w in workers:
            w.close()
    return result


async def closed_loop(
    target: Target,
    requests: Sequence[bytes],
    concurrency: int,
    duration_s: float,
    check: ResponseCheck,
    timeout_s: float = 10.0,
) -> LoadResult:
    """`concurrency` clients sending `requests` back to back until they run out or `duration_s` is over."""
    if concurrency < 1 or not requests:
        raise ValueError("closed_loop needs concurrency >= 1 and at least one request")
    result = LoadResult(None, concurrency, duration_s, [], 0)
    started = time.perf_counter()
    deadline = started + duration_s
    next_index = 0

    async def run(worker: _Worker) -> None:
        nonlocal next_index
        while next_index < len(requests) and time.perf_counter() < deadline:
            i = next_index
            next_index += 1
            await worker.send(requests[i], time.perf_counter())

    workers = [_Worker(target, result, check, timeout_s) for _ in range(concurrency)]
    try:
        await asyncio.wait_for(asyncio.gather(*(run(w) for w in workers)), duration_s + timeout_s + 5.0)
    except TimeoutError:
        result.errors += 1
        result.first_error = result.first_error or "step did not finish within its time bound"
    finally:
        for w in workers:
            w.close()
    result.duration_s = time.perf_counter() - started
    return result
