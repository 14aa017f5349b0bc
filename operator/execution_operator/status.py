"""Pure builders of Execution status patches, one per lifecycle transition.

Each builder takes the current status (as stored, camelCase) and returns the complete new values of the
fields it changes; the caller sends them as one resourceVersion-guarded merge patch. Lists (conditions,
attempts) are always sent whole, because a merge patch replaces lists. Every patch is shaped by the one
status model (`models.ExecutionStatus`): the status it leads to is validated and clamped (stream tails,
error texts, the attempt history) before it is written.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import pydantic
import structlog

from execution_operator.api import (
    TERMINAL_PHASES,
    ConditionReason,
    ConditionStatus,
    ConditionType,
    Launch,
    Phase,
)
from execution_operator.bounds import MAX_ATTEMPT_RECORDS
from execution_operator.classify import Verdict
from execution_operator.errors import ErrorInfo, ErrorType, condition_reason
from execution_operator.models import ExecutionStatus
from execution_operator.timestamps import parse_time as parse_time
from execution_operator.timestamps import rfc3339 as rfc3339

log = structlog.get_logger("execution_operator.status")

Builder = Callable[..., dict[str, Any]]


def through_model(status: Mapping[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`patch` as the status model shapes the status it leads to: validated, clamped, in wire form.

    A field the patch clears (None) stays cleared unless the model derives it from the others (a stream
    cut to its tail is flagged truncated); a field the model does not know is sent as built. Should the
    model refuse the result (a bug: every builder is tested against it), the patch goes as built and the
    API server's schema has the last word, so a status write is never held back by this check.
    """
    merged = {k: v for k, v in {**status, **patch}.items() if v is not None}
    try:
        shaped = ExecutionStatus.model_validate(merged).to_k8s()
    except pydantic.ValidationError as exc:
        log.error("status patch does not fit the status model", error=str(exc)[:500])
        return patch
    return {key: shaped.get(key, value) for key, value in patch.items()}


def _modelled(builder: Builder) -> Builder:
    @functools.wraps(builder)
    def build(status: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
        return through_model(status, builder(status, **kwargs))

    return build


def is_terminal(status: Mapping[str, Any]) -> bool:
    """Whether the stored phase is final, so nothing may change the outcome any more."""
    return status.get("phase") in TERMINAL_PHASES


def condition(
    conditions: list[dict[str, Any]] | None,
    ctype: str,
    status: str,
    reason: str,
    message: str,
    now: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    """Set one condition in metav1.Condition shape; lastTransitionTime moves only when status changes."""
    result = [dict(c) for c in (conditions or []) if c.get("type") != ctype]
    previous = next((c for c in conditions or [] if c.get("type") == ctype), None)
    transition = previous["lastTransitionTime"] if previous and previous.get("status") == status else now
    new: dict[str, Any] = {  # plain strings, as stored and compared
        "type": str(ctype),
        "status": str(status),
        "reason": str(reason),
        "message": message[:32768],
        "lastTransitionTime": transition,
    }
    if generation is not None:
        new["observedGeneration"] = generation
    result.append(new)
    order = {ConditionType.SUCCEEDED: 0, ConditionType.LAUNCHED: 1}
    result.sort(key=lambda c: order.get(c["type"], 9))
    return result


def _attempts_with(
    status: Mapping[str, Any], attempt: int, **fields: Any
) -> list[dict[str, Any]]:
    """The attempt history with one record created or updated; bounded to the latest records."""
    records = [dict(r) for r in status.get("attempts") or []]
    record = next((r for r in records if r.get("attempt") == attempt), None)
    if record is None:
        record = {"attempt": attempt}
        records.append(record)
    record.update({k: v for k, v in fields.items() if v is not None})
    records.sort(key=lambda r: int(r.get("attempt", 0)))
    return records[-MAX_ATTEMPT_RECORDS:]


def common(status: Mapping[str, Any], generation: int | None, correlation_id: str) -> dict[str, Any]:
    """The fields every status write carries."""
    patch: dict[str, Any] = {"correlationId": correlation_id}
    if generation is not None:
        patch["observedGeneration"] = generation
    return patch


@_modelled
def launched(
    status: Mapping[str, Any], *, attempt: int, pod: str, now: str, generation: int | None, correlation_id: str,
    launch: str = Launch.COLD,
) -> dict[str, Any]:
    """The pod is created (or claimed from a warm pool): Pending on this attempt.

    The previous attempt's live fields are cleared.
    """
    if launch == Launch.WARM:
        reason, message = ConditionReason.WARM_POD_CLAIMED, f"Warm pod {pod} claimed for attempt {attempt}"
    else:
        reason, message = ConditionReason.LAUNCHED, f"Pod {pod} created for attempt {attempt}"
    conditions = condition(status.get("conditions"), ConditionType.LAUNCHED, ConditionStatus.TRUE, reason, message,
                           now, generation)
    conditions = condition(
        conditions, ConditionType.SUCCEEDED, ConditionStatus.UNKNOWN, ConditionReason.PENDING,
        f"Attempt {attempt} is waiting for its pod to start", now, generation,
    )
    return common(status, generation, correlation_id) | {
        "phase": Phase.PENDING,
        "attempt": attempt,
        "podName": pod,
        "launch": launch,
        "startTime": status.get("startTime") or now,
        "nextAttemptAt": None,
        # What the previous attempt left behind stays in `attempts` and the Events, not in the live fields.
        "error": None,
        "exitCode": None,
        "exitCodeSource": None,
        "output": None,
        "stdout": None,
        "stderr": None,
        "attempts": _attempts_with(status, attempt, podName=pod, startTime=now, launch=launch),
        "conditions": conditions,
    }


@_modelled
def warm_started(
    status: Mapping[str, Any], *, attempt: int, pod: str, now: str, generation: int | None, correlation_id: str,
) -> dict[str, Any]:
    """A claimed warm pod took the payload: launched and running in one write (its code starts at once)."""
    patch = launched(status, attempt=attempt, pod=pod, now=now, generation=generation, correlation_id=correlation_id,
                     launch=Launch.WARM)
    after = {**status, **patch}
    return patch | running(after, attempt=attempt, started_at=now, now=now, generation=generation,
                           correlation_id=correlation_id)


@_modelled
def running(
    status: Mapping[str, Any], *, attempt: int, started_at: str, now: str, generation: int | None,
    correlation_id: str,
) -> dict[str, Any]:
    """The container started: Running, with the attempt's start time recorded."""
    conditions = condition(
        status.get("conditions"), ConditionType.SUCCEEDED, ConditionStatus.UNKNOWN, ConditionReason.RUNNING,
        f"Attempt {attempt} is running the code", now, generation,
    )
    return common(status, generation, correlation_id) | {
        "phase": Phase.RUNNING,
        "conditions": conditions,
        "attempts": _attempts_with(status, attempt, startTime=started_at),
    }


@_modelled
def held(
    status: Mapping[str, Any], *, reason: str, message: str, now: str, generation: int | None, correlation_id: str,
    next_attempt_at: str | None = None,
) -> dict[str, Any]:
    """Not launched yet: queued behind maxConcurrent, or waiting for an open circuit."""
    conditions = condition(status.get("conditions"), ConditionType.LAUNCHED, ConditionStatus.FALSE, reason, message,
                           now, generation)
    conditions = condition(conditions, ConditionType.SUCCEEDED, ConditionStatus.UNKNOWN, reason, message, now,
                           generation)
    patch = common(status, generation, correlation_id) | {
        "phase": Phase.RETRYING if status.get("phase") == Phase.RETRYING else Phase.PENDING,
        "conditions": conditions,
    }
    if next_attempt_at is not None:
        patch["nextAttemptAt"] = next_attempt_at
    return patch


def _verdict_fields(verdict: Verdict) -> dict[str, Any]:
    return {
        "output": verdict.output,
        "stdout": verdict.stdout,
        "stderr": verdict.stderr,
        "stdoutTruncated": verdict.stdout_truncated or None,
        "stderrTruncated": verdict.stderr_truncated or None,
        "exitCode": verdict.exit_code,
        "exitCodeSource": verdict.exit_code_source,
        "executionTimeSeconds": (
            round(verdict.duration_seconds, 3) if verdict.duration_seconds is not None else None
        ),
    }


def error_dict(error: ErrorInfo | None) -> dict[str, Any] | None:
    """`status.error` as JSON, or None to clear it."""
    return None if error is None else error.model_dump(mode="json", exclude_none=True)


def terminal_phase(verdict: Verdict) -> Phase:
    """The phase an Execution ends in when its last attempt produced `verdict`."""
    if verdict.success:
        return Phase.SUCCEEDED
    if verdict.error is not None and verdict.error.type == ErrorType.CANCELLED:
        return Phase.CANCELLED
    return Phase.FAILED


@_modelled
def finished(
    status: Mapping[str, Any], *, verdict: Verdict, attempt: int, now: str, generation: int | None,
    correlation_id: str,
) -> dict[str, Any]:
    """The terminal status of an Execution whose last attempt produced `verdict`."""
    error = verdict.error
    reason: str
    phase = terminal_phase(verdict)
    if phase == Phase.SUCCEEDED:
        cond_status = ConditionStatus.TRUE
        reason, message = ConditionReason.SUCCEEDED, f"Attempt {attempt} succeeded"
    elif phase == Phase.CANCELLED:
        assert error is not None
        cond_status = ConditionStatus.FALSE
        reason, message = ConditionReason.CANCELLED, error.message
    else:
        assert error is not None
        cond_status = ConditionStatus.FALSE
        reason, message = condition_reason(error.type), error.message
    conditions = condition(status.get("conditions"), ConditionType.SUCCEEDED, cond_status, reason, message, now,
                           generation)
    if error is not None and error.type == ErrorType.SERVICE_UNAVAILABLE:
        # Refused by an open circuit on its last attempt: never launched, and this is why.
        conditions = condition(conditions, ConditionType.LAUNCHED, ConditionStatus.FALSE,
                               ConditionReason.CIRCUIT_OPEN, error.message, now, generation)
    return common(status, generation, correlation_id) | _verdict_fields(verdict) | {
        "phase": phase,
        "success": verdict.success,
        "error": error_dict(error),
        "attempt": attempt,
        "completionTime": now,
        "nextAttemptAt": None,
        "conditions": conditions,
        "attempts": _attempts_with(
            status, attempt, completionTime=verdict.finished_at or now, exitCode=verdict.exit_code,
            errorType=str(error.type) if error else None,
        ),
    }


@_modelled
def retrying(
    status: Mapping[str, Any], *, verdict: Verdict, attempt: int, next_attempt_at: str, now: str,
    generation: int | None, correlation_id: str, disruptions: int,
) -> dict[str, Any]:
    """Attempt `attempt` failed with a retryable error: wait, then launch the next one."""
    error = verdict.error
    assert error is not None
    message = f"Attempt {attempt} failed ({error.type}: {error.message}); attempt {attempt + 1} at {next_attempt_at}"
    launched_reason = (ConditionReason.CIRCUIT_OPEN if error.type == ErrorType.SERVICE_UNAVAILABLE
                       else ConditionReason.RETRYING)
    conditions = condition(status.get("conditions"), ConditionType.LAUNCHED, ConditionStatus.FALSE, launched_reason,
                           message, now, generation)
    conditions = condition(conditions, ConditionType.SUCCEEDED, ConditionStatus.UNKNOWN, ConditionReason.RETRYING,
                           message, now, generation)
    patch = common(status, generation, correlation_id) | _verdict_fields(verdict) | {
        "phase": Phase.RETRYING,
        "error": error_dict(error),
        "attempt": attempt,
        "nextAttemptAt": next_attempt_at,
        "disruptions": disruptions,
        "conditions": conditions,
        "startTime": status.get("startTime") or now,
        "attempts": _attempts_with(
            status, attempt, completionTime=verdict.finished_at or now, exitCode=verdict.exit_code,
            errorType=str(error.type),
        ),
    }
    return patch


@_modelled
def invalid(
    status: Mapping[str, Any], *, error: ErrorInfo, now: str, generation: int | None, correlation_id: str
) -> dict[str, Any]:
    """The spec breaks a rule the schema cannot express: fail before launching anything."""
    conditions = condition(status.get("conditions"), ConditionType.LAUNCHED, ConditionStatus.FALSE,
                           ConditionReason.INVALID, error.message, now, generation)
    conditions = condition(conditions, ConditionType.SUCCEEDED, ConditionStatus.FALSE, condition_reason(error.type),
                           error.message, now, generation)
    return common(status, generation, correlation_id) | {
        "phase": Phase.FAILED,
        "success": False,
        "error": error_dict(error),
        "attempt": 0,
        "completionTime": now,
        "exitCodeSource": "unknown",
        "conditions": conditions,
    }
