"""The chaos client's retry pause and the three latencies it reports per request."""

from __future__ import annotations

import pytest

from loadtest.chaos_load import (
    MAX_RETRY_PAUSE_S,
    RETRY_PAUSE_S,
    Outcome,
    Run,
    p99_ms,
    retry_pause_s,
    source_of_503,
    timeline,
)
from serve_app.edge import shed_response


@pytest.mark.parametrize(
    ("header", "pause"),
    [
        (None, RETRY_PAUSE_S),
        ("", RETRY_PAUSE_S),
        ("0.5", 0.5),
        ("1", 1.0),
        ("30", MAX_RETRY_PAUSE_S),
        ("-3", 0.0),
        ("Wed, 21 Oct 2026 07:28:00 GMT", RETRY_PAUSE_S),
    ],
)
def test_the_retry_waits_for_retry_after_capped_or_a_short_default(header: str | None, pause: float) -> None:
    assert retry_pause_s(header) == pause


def _outcome(intended: float, sent: float, done: float, status: int = 200) -> Outcome:
    return Outcome(0, intended, done, status, False, None, 1, status, sent)


def test_latency_from_due_time_splits_into_generator_lag_and_server_time() -> None:
    o = _outcome(intended=1.0, sent=1.25, done=1.30)
    assert o.latency_ms == pytest.approx(300.0)
    assert o.lag_ms == pytest.approx(250.0)
    assert o.server_ms == pytest.approx(50.0)


def test_p99_counts_only_the_asked_status_and_measure() -> None:
    outcomes = [_outcome(0.0, 0.0, 0.010 * (i + 1)) for i in range(100)]
    outcomes.append(_outcome(0.0, 0.9, 1.0, status=503))
    assert p99_ms(outcomes) == pytest.approx(990.0, rel=0.02)
    assert p99_ms(outcomes, status=503, measure="server_ms") == pytest.approx(100.0)
    assert p99_ms(outcomes, status=503, measure="lag_ms") == pytest.approx(900.0)


def test_the_timeline_shows_what_a_client_retry_hid() -> None:
    run = Run(rate=3.0, duration_s=2.0, marks={"kill": 1.5})
    run.outcomes = [
        Outcome(0, 0.1, 0.2, 200, False, None, 1, 200, 0.1),
        Outcome(1, 0.4, 1.6, 200, False, None, 2, 503, 0.4, "edge"),  # shed, served after Retry-After
        Outcome(2, 1.2, 1.3, 200, True, None, 1, 200, 1.2),
    ]
    assert timeline(run) == ["   0.0s 200=2 first-503-edge=1", "   1.0s degraded=1   <- kill"]


def test_a_503_names_who_refused() -> None:
    edge_body = shed_response(1).split("\r\n\r\n", 1)[1].encode()
    assert source_of_503(503, edge_body) == "edge"
    assert source_of_503(503, b"<html>503 Service Unavailable</html>") == "serve"
    assert source_of_503(200, edge_body) == ""
    run = Run(rate=1.0, duration_s=1.0)
    run.outcomes = [Outcome(0, 0.1, 0.2, 503, None, "1", 2, 503, 0.1, "edge", "serve")]
    assert timeline(run) == ["   0.0s 503-serve=1 first-503-edge=1"]
