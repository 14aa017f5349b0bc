"""The retry policy: full-jitter backoff bounds and the retry decision table."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from execution_operator.errors import ERROR_FLAGS, USER_CODE_TYPES, ErrorType, flags
from execution_operator.retry import backoff_delay, budget_used, decide_retry, delay_until


@given(
    attempt=st.integers(min_value=1, max_value=10_000),
    base=st.floats(min_value=0, max_value=1000, allow_nan=False),
    cap=st.floats(min_value=0, max_value=10_000, allow_nan=False),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_backoff_stays_within_the_full_jitter_window(attempt: int, base: float, cap: float, seed: int) -> None:
    delay = backoff_delay(attempt, base, cap, random.Random(seed))
    assert 0.0 <= delay <= min(cap, base * 2.0 ** min(attempt - 1, 62))


def test_backoff_window_doubles_until_the_cap() -> None:
    rng = random.Random(7)
    # Many samples: the maximum approaches the window's ceiling, never exceeds it.
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (40, 30.0)]:
        samples = [backoff_delay(attempt, 1.0, 30.0, rng) for _ in range(2000)]
        assert max(samples) <= ceiling
        assert max(samples) > 0.9 * ceiling
        assert min(samples) < 0.1 * ceiling


def test_backoff_is_deterministic_for_a_seeded_rng() -> None:
    first = [backoff_delay(n, 1.0, 30.0, random.Random(42)) for n in range(1, 6)]
    second = [backoff_delay(n, 1.0, 30.0, random.Random(42)) for n in range(1, 6)]
    assert first == second


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="1-based"):
        backoff_delay(0, 1.0, 30.0, random.Random())
    with pytest.raises(ValueError, match="must not be negative"):
        backoff_delay(1, -1.0, 30.0, random.Random())


@pytest.mark.parametrize("error_type", sorted(t for t in ErrorType if not flags(t).retryable))
def test_non_retryable_types_are_never_retried(error_type: ErrorType) -> None:
    decision = decide_retry(error_type, attempt=1, max_attempts=10, disruptions=0)
    assert not decision.retry
    assert not decision.consumes_budget


def test_user_code_exceptions_are_never_retried() -> None:
    for error_type in USER_CODE_TYPES - {ErrorType.NETWORK_ERROR, ErrorType.NETWORK_TIMEOUT}:
        assert not decide_retry(error_type, 1, 10, 0).retry, error_type


@pytest.mark.parametrize(
    "error_type",
    sorted(t for t, f in ERROR_FLAGS.items() if f.retryable and not f.disruption),
)
def test_retryable_types_use_the_budget(error_type: ErrorType) -> None:
    first = decide_retry(error_type, attempt=1, max_attempts=3, disruptions=0)
    assert first.retry
    assert first.consumes_budget
    assert decide_retry(error_type, attempt=2, max_attempts=3, disruptions=0).retry
    last = decide_retry(error_type, attempt=3, max_attempts=3, disruptions=0)
    assert not last.retry
    assert "exhausted" in last.reason


def test_service_unavailable_is_retried_like_others() -> None:
    assert decide_retry(ErrorType.SERVICE_UNAVAILABLE, 1, 2, 0).retry
    assert not decide_retry(ErrorType.SERVICE_UNAVAILABLE, 2, 2, 0).retry


def test_max_attempts_one_means_no_retry() -> None:
    assert not decide_retry(ErrorType.IMAGE_PULL_ERROR, 1, 1, 0).retry


@pytest.mark.parametrize("error_type", [ErrorType.EVICTED, ErrorType.NODE_LOST, ErrorType.POD_DELETED])
def test_disruptions_are_free_up_to_their_cap_then_charged(error_type: ErrorType) -> None:
    # max_attempts=1: the user allowed no retries at all, yet disruptions are retried.
    for earlier in range(3):
        decision = decide_retry(error_type, attempt=earlier + 1, max_attempts=1, disruptions=earlier)
        assert decision.retry, earlier
        assert not decision.consumes_budget, earlier
    # The fourth disruption is beyond the cap and the budget of 1 is already used.
    assert not decide_retry(error_type, attempt=4, max_attempts=1, disruptions=3).retry
    # With a budget of 2 the fourth disruption is charged and retried once more.
    charged = decide_retry(error_type, attempt=4, max_attempts=2, disruptions=3)
    assert charged.retry
    assert charged.consumes_budget
    assert not decide_retry(error_type, attempt=5, max_attempts=2, disruptions=4).retry


def test_free_disruptions_do_not_count_against_later_failures() -> None:
    # Two evictions, then an image pull error on attempt 3: only attempt 3 is charged.
    assert budget_used(3, 2) == 1
    assert decide_retry(ErrorType.IMAGE_PULL_ERROR, attempt=3, max_attempts=2, disruptions=2).retry
    assert not decide_retry(ErrorType.IMAGE_PULL_ERROR, attempt=4, max_attempts=2, disruptions=2).retry


@given(
    types=st.lists(st.sampled_from(sorted(ErrorType)), min_size=1, max_size=40),
    max_attempts=st.integers(min_value=1, max_value=10),
)
def test_any_failure_sequence_ends_within_the_total_cap(types: list[ErrorType], max_attempts: int) -> None:
    """Whatever fails, the number of attempts is bounded by maxAttempts plus the disruption cap."""
    disruptions = 0
    attempt = 0
    for error_type in types:
        attempt += 1
        decision = decide_retry(error_type, attempt, max_attempts, disruptions)
        if not decision.retry:
            break
        if flags(error_type).disruption:
            disruptions += 1
    assert attempt <= max_attempts + 3


def test_rejects_invalid_counts() -> None:
    with pytest.raises(ValueError, match="1-based"):
        decide_retry(ErrorType.EVICTED, attempt=0, max_attempts=2, disruptions=0)
    with pytest.raises(ValueError, match="not a valid ErrorType"):
        decide_retry("no_such_type", attempt=1, max_attempts=2, disruptions=0)


def test_delay_until_waits_for_the_time_plus_a_spread() -> None:
    now = datetime(2026, 7, 1, tzinfo=UTC)
    rng = random.Random(3)
    delays = [delay_until(now + timedelta(seconds=20), now, rng, spread=5) for _ in range(500)]
    assert all(20 <= d <= 25 for d in delays)
    assert max(delays) - min(delays) > 4  # really spread out
    assert 0 <= delay_until(now - timedelta(seconds=20), now, rng, spread=1) <= 1
    assert delay_until(now, now, rng, spread=0) == 0
