"""What follows an attempt's verdict, decided without I/O: retry it (when, and what it costs) or end.

`plan_after_attempt` is a pure function of the verdict, the Execution's retry policy, the attempt and the
disruptions so far; `attempt_outcomes` carries the plan out (status write, DeadLetter, metrics, Events,
logs). The texts of the Events that announce a retry or an end are built here too.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from execution_operator.api import EventReason, EventType, Phase
from execution_operator.classify import Verdict
from execution_operator.errors import ErrorInfo
from execution_operator.models import RetryPolicy
from execution_operator.retry import backoff_delay, decide_retry, delay_until
from execution_operator.status import rfc3339, terminal_phase


@dataclass(frozen=True)
class RetryPlan:
    """Retry the failed attempt: the next one is due at `next_attempt_at`."""

    next_attempt_at: datetime
    #: status.disruptions after this attempt (one more when the retry does not use the user's budget).
    disruptions: int


@dataclass(frozen=True)
class EndPlan:
    """End the Execution in `phase` with the attempt's verdict."""

    phase: Phase
    #: The `outcome` label of the terminal metrics: succeeded, failed or cancelled.
    outcome: str
    #: Copy the Execution to its DeadLetter (when its class's policy wants one) before the terminal write.
    dead_letter: bool


AttemptPlan = RetryPlan | EndPlan


class EventNote(NamedTuple):
    """An Event to post about the Execution: its type, reason and message."""

    type: EventType
    reason: EventReason
    message: str


def plan_after_attempt(
    verdict: Verdict,
    policy: RetryPolicy,
    *,
    attempt: int,
    disruptions: int,
    now: datetime,
    rng: random.Random,
    not_before: datetime | None = None,
) -> AttemptPlan:
    """Retry or end after attempt `attempt` produced `verdict`.

    A failure whose type is retryable is retried while the policy's budget lasts; attempts lost to
    disruptions (eviction, node lost) do not count against it (`retry.decide_retry`). The next attempt
    waits a full-jitter backoff; one held by an open circuit (`not_before`, its retryAt) waits until
    then, spread over a few seconds so the held Executions do not all return in the same instant
    (`retry.delay_until`).

    Args:
        verdict: What the attempt came to.
        policy: The Execution's spec.retry.
        attempt: The 1-based number of the attempt that just ended.
        disruptions: status.disruptions before this attempt.
        now: The time the decision is made.
        rng: The random source of the jitter (drawn from only when retrying).
        not_before: The earliest time for the next attempt, if the launch was refused until then.

    Returns:
        A `RetryPlan` or an `EndPlan`.
    """
    error = verdict.error
    if verdict.success or error is None:
        return end_plan(verdict)
    decision = decide_retry(error.type, attempt, policy.max_attempts, disruptions)
    if not decision.retry:
        return end_plan(verdict)
    delay = backoff_delay(attempt, policy.backoff_seconds, policy.max_backoff_seconds, rng)
    next_at = now + timedelta(seconds=delay)
    if not_before is not None:
        next_at = max(next_at, now + timedelta(seconds=delay_until(not_before, now, rng)))
    return RetryPlan(next_attempt_at=next_at, disruptions=disruptions + (0 if decision.consumes_budget else 1))


def end_plan(verdict: Verdict) -> EndPlan:
    """How an Execution ends whose last attempt produced `verdict`."""
    phase = terminal_phase(verdict)
    outcome = {Phase.SUCCEEDED: "succeeded", Phase.CANCELLED: "cancelled"}.get(phase, "failed")
    return EndPlan(phase=phase, outcome=outcome, dead_letter=phase == Phase.FAILED)


def retry_event(attempt: int, error: ErrorInfo, next_attempt_at: datetime) -> EventNote:
    """The Event that announces a retry."""
    return EventNote(EventType.WARNING, EventReason.RETRYING,
                     f"Attempt {attempt} failed with {error.type}: {error.message}; "
                     f"retrying at {rfc3339(next_attempt_at)}")


def end_event(verdict: Verdict, plan: EndPlan, attempt: int, dead_letter: str | None) -> EventNote:
    """The Event that announces the end, naming the DeadLetter the Execution was copied to."""
    if verdict.success:
        return EventNote(EventType.NORMAL, EventReason.SUCCEEDED, f"Attempt {attempt} succeeded")
    error = verdict.error
    assert error is not None
    kept = f" (kept in DeadLetter {dead_letter})" if dead_letter else ""
    return EventNote(EventType.WARNING, EventReason(plan.phase), f"{error.type}: {error.message}{kept}")
