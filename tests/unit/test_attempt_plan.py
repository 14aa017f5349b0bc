"""What follows an attempt's verdict (attempt_plan): retry or end, without a cluster."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from execution_operator.api import EventReason, EventType, Phase
from execution_operator.attempt_plan import EndPlan, RetryPlan, end_event, plan_after_attempt, retry_event
from execution_operator.classify import Verdict
from execution_operator.errors import ErrorInfo, ErrorType
from execution_operator.models import RetryPolicy
from execution_operator.retry import backoff_delay, delay_until

NOW = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = RetryPolicy(max_attempts=3, backoff_seconds=2, max_backoff_seconds=30)


def failed(error_type: ErrorType, message: str = "it broke") -> Verdict:
    return Verdict(success=False, error=ErrorInfo.of(error_type, message), exit_code=None,
                   exit_code_source="unknown")


def plan(verdict: Verdict, *, attempt: int = 1, disruptions: int = 0, seed: int = 1,
         not_before: datetime | None = None) -> RetryPlan | EndPlan:
    return plan_after_attempt(verdict, POLICY, attempt=attempt, disruptions=disruptions, now=NOW,
                              rng=random.Random(seed), not_before=not_before)


def test_a_success_ends_succeeded_without_a_dead_letter() -> None:
    verdict = Verdict(success=True, error=None, exit_code=0, exit_code_source="container")
    assert plan(verdict) == EndPlan(phase=Phase.SUCCEEDED, outcome="succeeded", dead_letter=False)
    assert end_event(verdict, EndPlan(Phase.SUCCEEDED, "succeeded", False), 2, None) == (
        EventType.NORMAL, EventReason.SUCCEEDED, "Attempt 2 succeeded")


def test_a_failure_of_the_code_ends_failed_with_a_dead_letter() -> None:
    verdict = failed(ErrorType.RUNTIME_ERROR, "ZeroDivisionError")
    ended = plan(verdict)
    assert ended == EndPlan(phase=Phase.FAILED, outcome="failed", dead_letter=True)
    assert isinstance(ended, EndPlan)
    assert end_event(verdict, ended, 1, "dl-1") == (
        EventType.WARNING, EventReason.FAILED, "runtime_error: ZeroDivisionError (kept in DeadLetter dl-1)")
    assert end_event(verdict, ended, 1, None).message == "runtime_error: ZeroDivisionError"


def test_a_cancel_ends_cancelled_without_a_dead_letter() -> None:
    ended = plan(failed(ErrorType.CANCELLED, "Cancelled by spec.cancel"))
    assert ended == EndPlan(phase=Phase.CANCELLED, outcome="cancelled", dead_letter=False)


def test_a_retryable_failure_waits_the_backoff_and_uses_the_budget() -> None:
    retried = plan(failed(ErrorType.NETWORK_ERROR), attempt=2, seed=5)
    expected = NOW + timedelta(seconds=backoff_delay(2, 2, 30, random.Random(5)))
    assert retried == RetryPlan(next_attempt_at=expected, disruptions=0)


def test_the_budget_runs_out() -> None:
    assert isinstance(plan(failed(ErrorType.NETWORK_ERROR), attempt=3), EndPlan)


def test_a_disruption_is_retried_without_the_budget_and_counted() -> None:
    retried = plan(failed(ErrorType.EVICTED), attempt=3, disruptions=1)
    assert isinstance(retried, RetryPlan)
    assert retried.disruptions == 2


def test_an_open_circuit_holds_the_retry_until_its_retry_at_spread() -> None:
    retry_at = NOW + timedelta(minutes=5)
    retried = plan(failed(ErrorType.SERVICE_UNAVAILABLE), seed=9, not_before=retry_at)
    rng = random.Random(9)
    backoff = backoff_delay(1, 2, 30, rng)  # drawn first, as the plan draws it
    held = delay_until(retry_at, NOW, rng)
    assert retried == RetryPlan(next_attempt_at=NOW + timedelta(seconds=max(backoff, held)), disruptions=0)
    assert isinstance(retried, RetryPlan)
    assert retry_at <= retried.next_attempt_at <= retry_at + timedelta(seconds=5)


@pytest.mark.parametrize("error_type", [ErrorType.TIMEOUT, ErrorType.RUNTIME_ERROR, ErrorType.VALIDATION_ERROR])
def test_what_is_not_retryable_ends_at_once(error_type: ErrorType) -> None:
    assert isinstance(plan(failed(error_type), attempt=1), EndPlan)


def test_the_retry_event_names_the_attempt_the_error_and_the_time() -> None:
    error = ErrorInfo.of(ErrorType.NETWORK_ERROR, "connection reset")
    note = retry_event(1, error, NOW + timedelta(seconds=3))
    assert note.type == EventType.WARNING
    assert note.reason == EventReason.RETRYING
    assert note.message.startswith("Attempt 1 failed with network_error: connection reset; retrying at 2026-01-01T")
