"""CircuitBreaker: opens after repeated failures, lets one probe through after the pause."""

from __future__ import annotations

import pytest

from serve_app.breaker import CircuitBreaker


class Clock:
    """A hand-driven monotonic clock, so the pause is exact and the test instant."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_threshold_and_probes_after_pause() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=1.5, clock=clock)
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "closed"
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    assert not breaker.allow()
    clock.now += 1.4
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.allow()  # the probe
    assert breaker.state == "half_open"
    assert not breaker.allow()  # only one probe at a time
    breaker.record_success()
    assert breaker.state == "closed"
    assert breaker.allow()


def test_a_failed_probe_opens_again_for_a_full_pause() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=1.0, clock=clock)
    breaker.record_failure()
    clock.now += 1.0
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    clock.now += 0.5
    assert not breaker.allow()
    clock.now += 0.5
    assert breaker.allow()


def test_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=1.0, clock=Clock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state == "closed"


@pytest.mark.parametrize(("threshold", "pause"), [(0, 1.0), (1, 0.0)])
def test_invalid_settings_are_refused(threshold: int, pause: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        CircuitBreaker(failure_threshold=threshold, reset_after_s=pause)


def test_mostly_slow_answers_open_it_although_none_failed() -> None:
    breaker = CircuitBreaker(
        failure_threshold=3, reset_after_s=1.0, clock=Clock(), slow_call_s=0.025, slow_share=0.5, window=4
    )
    for elapsed in (0.001, 0.040, 0.002, 0.030):  # two of four slow, never two in a row
        assert breaker.allow()
        breaker.record_success(elapsed)
    assert breaker.state == "open"
    assert not breaker.allow()


def test_occasional_slow_answers_keep_it_closed() -> None:
    breaker = CircuitBreaker(
        failure_threshold=3, reset_after_s=1.0, clock=Clock(), slow_call_s=0.025, slow_share=0.5, window=4
    )
    for elapsed in (0.040, 0.001, 0.002, 0.003, 0.040, 0.001, 0.002, 0.003):
        breaker.record_success(elapsed)
    assert breaker.state == "closed"


def test_a_slow_probe_opens_it_again_and_a_fast_one_starts_afresh() -> None:
    clock = Clock()
    breaker = CircuitBreaker(
        failure_threshold=1, reset_after_s=1.0, clock=clock, slow_call_s=0.025, slow_share=0.5, window=4
    )
    breaker.record_failure()
    clock.now += 1.0
    assert breaker.allow()
    breaker.record_success(0.200)  # answered, but late
    assert breaker.state == "open"
    clock.now += 1.0
    assert breaker.allow()
    breaker.record_success(0.002)
    assert breaker.state == "closed"
    breaker.record_success(0.040)  # one slow call after recovery: the old ones no longer count
    assert breaker.state == "closed"


def test_without_a_slow_threshold_slowness_is_ignored() -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=1.0, clock=Clock(), window=2)
    for _ in range(5):
        breaker.record_success(10.0)
    assert breaker.state == "closed"
