"""The edge HAProxy, for real, in front of an upstream that holds requests until told: it lets the budget
through, queues a few for the queue timeout (more through a short stall, never past the burst queue),
refuses the rest at once with 503 + Retry-After, keeps probes answering while saturated, resends what a
dying replica dropped, passes the upstream's own answers unchanged and logs no request content."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from serve_app.edge import Address, Edge, EdgeSettings
from serve_app.redis_server import free_port

CARD_LIKE = "4111111111111111"


class HeldUpstream:
    """/v1/score waits for `release`; /readyz answers at once; /bad answers 422 with a detail."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.arrived = 0
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: object) -> None:  # quiet test output
                return

            def do_GET(self) -> None:
                self._answer(200, b'{"status":"ready"}')

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path == "/bad":
                    self._answer(422, b'{"detail":[{"loc":["body","amount"]}]}')
                    return
                if self.path in ("/dies-once", "/500-once", "/busy"):
                    with upstream.lock:
                        upstream.calls[self.path] = upstream.calls.get(self.path, 0) + 1
                        first = upstream.calls[self.path] == 1
                    if self.path == "/busy":  # Serve's own backpressure answer
                        self._answer(503, b'{"detail":"busy"}', {"Retry-After": "1"})
                    elif first and self.path == "/500-once":  # Serve's answer for a dead replica
                        self._answer(500, b"Internal Server Error")
                    elif first:  # a replica killed mid-request: the connection closes, no answer
                        self.close_connection = True
                    else:
                        self._answer(200, b'{"decision":"approve"}')
                    return
                with upstream.lock:
                    upstream.arrived += 1
                upstream.release.wait(10.0)
                self._answer(200, b'{"decision":"approve"}')

            def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def address(self) -> Address:
        return Address("127.0.0.1", self.server.server_address[1])


@pytest.fixture
def upstream() -> Iterator[HeldUpstream]:
    held = HeldUpstream()
    held.thread.start()
    yield held
    held.release.set()
    held.server.shutdown()
    held.server.server_close()


@pytest.fixture
def edge(upstream: HeldUpstream, tmp_path: Path) -> Iterator[Edge]:
    settings = EdgeSettings(
        max_in_flight=2, max_queue=1, burst_queue=1, queue_timeout_ms=400, retry_after_s=2
    )
    running = Edge(settings, Address("127.0.0.1", free_port()), upstream.address, tmp_path / "edge").start()
    yield running
    running.stop()


@pytest.fixture
def bursty_edge(upstream: HeldUpstream, tmp_path: Path) -> Iterator[Edge]:
    """Two in flight, one queued under overload; a stall may queue two more, four at most."""
    settings = EdgeSettings(
        max_in_flight=2, max_queue=1, burst_queue=4, burst_per_s=2, queue_timeout_ms=5000, retry_after_s=1
    )
    running = Edge(settings, Address("127.0.0.1", free_port()), upstream.address, tmp_path / "edge").start()
    yield running
    running.stop()


def _post(base: str, path: str = "/v1/score") -> httpx.Response:
    body = {"transaction_id": "t-1", "card": CARD_LIKE}
    return httpx.post(f"{base}{path}", json=body, headers={"X-API-Key": "k"}, timeout=15.0)


def _wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def test_budget_queue_and_refusal(edge: Edge, upstream: HeldUpstream) -> None:
    base = f"http://{edge.listen}"
    with ThreadPoolExecutor(max_workers=4) as pool:
        held: list[Future[httpx.Response]] = [pool.submit(_post, base) for _ in range(2)]
        _wait_for(lambda: upstream.arrived == 2)
        queued = pool.submit(_post, base)
        time.sleep(0.1)  # the third is waiting in the edge's queue, not at the upstream
        assert upstream.arrived == 2
        assert not queued.done()

        started = time.monotonic()
        refused = _post(base)  # budget and queue full: refused at once
        assert refused.status_code == 503
        assert time.monotonic() - started < 0.3
        assert refused.headers["Retry-After"] == "2"
        assert "detail" in refused.json()

        # Probes pass while scoring is saturated: an overloaded scorer is alive and ready.
        assert httpx.get(f"{base}/readyz", timeout=5.0).status_code == 200

        timed_out = queued.result(timeout=5.0)  # waited its 400 ms queue timeout, then refused
        assert timed_out.status_code == 503
        assert timed_out.headers["Retry-After"] == "2"
        assert "detail" in timed_out.json()

        upstream.release.set()
        assert [f.result(timeout=10.0).status_code for f in held] == [200, 200]
    assert upstream.arrived == 2  # nothing refused ever reached the upstream


def _queue_one(pool: ThreadPoolExecutor, base: str) -> Future[httpx.Response]:
    """Send a request and check that it waits at the edge (neither refused nor at the upstream)."""
    future = pool.submit(_post, base)
    time.sleep(0.15)
    assert not future.done(), f"expected it to wait, got {future.result().status_code}"
    return future


def test_a_stall_may_queue_a_burst_but_an_overload_is_shed_at_max_queue(
    bursty_edge: Edge, upstream: HeldUpstream
) -> None:
    base = f"http://{bursty_edge.listen}"
    with ThreadPoolExecutor(max_workers=12) as pool:
        held = [pool.submit(_post, base) for _ in range(2)]
        _wait_for(lambda: upstream.arrived == 2)
        waiting = [_queue_one(pool, base)]  # the standing queue (max_queue = 1)
        # Two arrivals find the queue at max_queue: within the allowance of 2 a second, they wait too.
        waiting += [_queue_one(pool, base), _queue_one(pool, base)]
        # The third in the same second means an overload, not a stall: shed at once, queue not full.
        started = time.monotonic()
        refused = _post(base)
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        assert time.monotonic() - started < 0.3
        assert upstream.arrived == 2

        upstream.release.set()
        assert [f.result(timeout=10.0).status_code for f in held + waiting] == [200] * 5
        assert upstream.arrived == 5


def test_the_burst_queue_is_a_hard_limit(upstream: HeldUpstream, tmp_path: Path) -> None:
    settings = EdgeSettings(max_in_flight=2, max_queue=1, burst_queue=2, burst_per_s=100)
    edge = Edge(settings, Address("127.0.0.1", free_port()), upstream.address, tmp_path / "edge").start()
    base = f"http://{edge.listen}"
    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            held = [pool.submit(_post, base) for _ in range(2)]
            _wait_for(lambda: upstream.arrived == 2)
            waiting = [_queue_one(pool, base), _queue_one(pool, base)]
            assert _post(base).status_code == 503  # allowance left, but the burst queue is full
            upstream.release.set()
            assert [f.result(timeout=10.0).status_code for f in held + waiting] == [200] * 4
    finally:
        edge.stop()


def test_an_edge_that_follows_dns_forwards_to_the_named_upstream(
    upstream: HeldUpstream, tmp_path: Path
) -> None:
    upstream.release.set()
    named = Address("localhost", upstream.address.port)
    settings = EdgeSettings(follow_dns=True)
    edge = Edge(settings, Address("127.0.0.1", free_port()), named, tmp_path / "edge").start()
    try:
        assert _post(f"http://{edge.listen}").status_code == 200
    finally:
        edge.stop()


def test_upstream_answers_pass_through_unchanged(edge: Edge, upstream: HeldUpstream) -> None:
    upstream.release.set()
    base = f"http://{edge.listen}"
    bad = _post(base, "/bad")
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "amount"]
    assert _post(base).status_code == 200


def test_the_edge_logs_no_request_content(edge: Edge, upstream: HeldUpstream) -> None:
    upstream.release.set()
    assert _post(f"http://{edge.listen}").status_code == 200
    edge.stop()
    logs = "\n".join(p.read_text(errors="replace") for p in edge.directory.glob("*.log"))
    assert CARD_LIKE not in logs
    assert "X-API-Key" not in logs


def test_an_answer_lost_with_its_replica_is_resent_but_backpressure_is_not(
    edge: Edge, upstream: HeldUpstream
) -> None:
    """Every route is idempotent, so a request whose replica died before answering is sent again; a 503
    from Serve is its queue limit speaking and reaches the client as it is."""
    base = f"http://{edge.listen}"
    saved = _post(base, "/dies-once")
    assert saved.status_code == 200
    assert upstream.calls["/dies-once"] == 2
    assert _post(base, "/500-once").status_code == 200
    assert upstream.calls["/500-once"] == 2
    busy = _post(base, "/busy")
    assert busy.status_code == 503
    assert busy.json() == {"detail": "busy"}
    assert upstream.calls["/busy"] == 1
