"""The per-ExecutionClass circuit breaker as a pure state machine.

Every function takes the current `BreakerState` and the time as arguments and returns a new state
(plus the transition it made, if any); nothing here reads a clock or talks to the API. That keeps
the rules testable and lets `breaker_store` re-apply the same step after an optimistic-concurrency
conflict against a freshly read status.

The machine (held in the ExecutionClass's `status.circuitBreaker`):

* ``closed``: every launch is admitted. Consecutive failures of types whose `trips_breaker` flag is
  set are counted; a launch that reached the user's code resets the count. At `failure_threshold`
  the breaker opens.
* ``open``: launches are refused until `retryAt` (`openedAt` + `open_seconds`).
* ``half_open``: entered lazily by the first admission after `retryAt`. At most
  `half_open_max_probes` probe launches are in flight at once; `success_threshold` successes close
  the breaker, any counted failure reopens it with a fresh `retryAt`. A probe that never reports
  back releases its slot after `probe_timeout_seconds`, so the breaker cannot wedge half-open.

Manual control (annotations on the ExecutionClass, `breaker_control.apply_control`) can force the
breaker open or closed and reset it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, computed_field

from .api import (
    ANNOTATION_CIRCUIT_BREAKER,
    ConditionReason,
    ConditionStatus,
    ConditionType,
)
from .errors import ErrorType, flags
from .timestamps import rfc3339 as format_time  # re-exported: the breaker writes times

#: The condition type on the ExecutionClass.
AVAILABLE = ConditionType.AVAILABLE

_MESSAGE_LIMIT = 256


def as_utc(value: datetime) -> datetime:
    """Normalise to aware UTC so comparisons never mix naive and aware times (naive means UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]


class CircuitState(StrEnum):
    """Closed lets launches through, open holds them, half-open lets a few probes test the class."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class ControlMode(StrEnum):
    """The value of the `sandbox.dev/circuit-breaker` annotation."""

    AUTO = "auto"
    FORCE_OPEN = "force-open"
    FORCE_CLOSED = "force-closed"


class LastFailure(BaseModel):
    """The launch failure that last counted against the breaker (`lastFailure`), kept for whoever investigates."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    type: str
    message: str
    time: UtcDatetime


class ProbeLease(BaseModel):
    """One half-open probe slot; `holder` identifies the launch (e.g. `ns/name#attempt`) if known."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    holder: str | None = None
    started_at: UtcDatetime = Field(alias="startedAt")


class BreakerState(BaseModel):
    """`status.circuitBreaker` of an ExecutionClass; serialise with `to_status()`.

    `failureCount` counts the counted failures since the breaker last closed (consecutive ones while
    closed: a success resets it). `successCount` counts successes in the current half-open round.
    """

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    state: CircuitState = CircuitState.CLOSED
    failure_count: int = Field(default=0, ge=0, alias="failureCount")
    success_count: int = Field(default=0, ge=0, alias="successCount")
    last_failure: LastFailure | None = Field(default=None, alias="lastFailure")
    opened_at: UtcDatetime | None = Field(default=None, alias="openedAt")
    retry_at: UtcDatetime | None = Field(default=None, alias="retryAt")
    probes: tuple[ProbeLease, ...] = ()
    forced: ControlMode = ControlMode.AUTO
    last_reset: str | None = Field(default=None, alias="lastReset")
    last_transition_time: UtcDatetime | None = Field(default=None, alias="lastTransitionTime")

    @computed_field(alias="probesInFlight")  # type: ignore[prop-decorator]
    @property
    def probes_in_flight(self) -> int:
        """The number of probe slots taken, in the status so readers need not count them."""
        return len(self.probes)

    @classmethod
    def from_status(cls, data: Mapping[str, Any] | None) -> BreakerState:
        """Parse `status.circuitBreaker`; a missing or unreadable one starts closed."""
        if not data:
            return cls()
        return cls.model_validate(dict(data))

    def to_status(self) -> dict[str, Any]:
        """The JSON for `status.circuitBreaker` (camelCase; unset optional fields as null).

        Top-level nulls delete the field under a merge patch; inside the `probes` array (which a
        merge patch replaces wholesale) they would be stored, so they are left out there.
        """
        data = self.model_dump(mode="json", by_alias=True)
        data["probes"] = [{k: v for k, v in lease.items() if v is not None} for lease in data["probes"]]
        return data


@dataclass(frozen=True)
class BreakerPolicy:
    """Thresholds from the ExecutionClass's `spec.circuitBreaker`."""

    failure_threshold: int = 5
    open_seconds: float = 30.0
    success_threshold: int = 2
    #: Concurrent probes allowed while half-open; defaults to `success_threshold`.
    half_open_max_probes: int | None = None
    #: A probe that has not reported after this long gives its slot back. It must exceed the
    #: class's pending timeout, which bounds how long a launch can take to resolve.
    probe_timeout_seconds: float = 300.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.success_threshold < 1:
            raise ValueError("failure_threshold and success_threshold must be at least 1")
        if self.open_seconds < 0 or self.probe_timeout_seconds <= 0:
            raise ValueError("open_seconds must be >= 0 and probe_timeout_seconds > 0")
        if self.half_open_max_probes is not None and self.half_open_max_probes < 1:
            raise ValueError("half_open_max_probes must be at least 1")

    @property
    def max_probes(self) -> int:
        """Probes allowed at once when half-open: `halfOpenMaxProbes`, else as many as the successes that close."""
        return self.half_open_max_probes or self.success_threshold

    @classmethod
    def from_spec(
        cls, spec: Mapping[str, Any] | None, *, pending_timeout_seconds: float | None = None
    ) -> BreakerPolicy:
        """Build from `spec.circuitBreaker`; the probe timeout follows the class's pending timeout."""
        spec = spec or {}
        probe_timeout = cls.probe_timeout_seconds
        if pending_timeout_seconds is not None:
            # A probe resolves by the time the pending timeout classifies it; add room for the
            # operator to notice and write the result.
            probe_timeout = max(probe_timeout, float(pending_timeout_seconds) + 60.0)
        return cls(
            failure_threshold=int(spec.get("failureThreshold", cls.failure_threshold)),
            open_seconds=float(spec.get("openSeconds", cls.open_seconds)),
            success_threshold=int(spec.get("successThreshold", cls.success_threshold)),
            half_open_max_probes=(
                int(spec["halfOpenMaxProbes"]) if spec.get("halfOpenMaxProbes") is not None else None
            ),
            probe_timeout_seconds=probe_timeout,
        )


@dataclass(frozen=True)
class Transition:
    """A change of `state`; feeds Events (`reason`) and the transitions metric (label `to`)."""

    from_state: CircuitState
    to_state: CircuitState
    reason: str
    at: datetime

    @property
    def to(self) -> str:
        """The new state's name: the `to` label of the transitions metric."""
        return self.to_state.value


@dataclass(frozen=True)
class Admission:
    """The answer to "may this launch go ahead?".

    When refused, `retry_at` says when asking again can make sense. `new_state` must be persisted
    when it differs from the input (a probe slot was taken or the breaker went half-open).
    """

    allowed: bool
    probe: bool
    retry_at: datetime | None
    new_state: BreakerState
    transition: Transition | None = None


# Transition reasons (also used as Event reasons).
REASON_THRESHOLD = "FailureThresholdReached"
REASON_OPEN_ELAPSED = "OpenPeriodElapsed"
REASON_PROBES_SUCCEEDED = "ProbesSucceeded"
REASON_PROBE_FAILED = "ProbeFailed"
REASON_FORCED_OPEN = "ForcedOpen"
REASON_FORCED_CLOSED = "ForcedClosed"
REASON_RESET = "Reset"


def move_to(
    state: BreakerState, to: CircuitState, reason: str, now: datetime, **changes: Any
) -> tuple[BreakerState, Transition | None]:
    """Apply `changes`; if the state name changes, stamp the transition time and report it."""
    if to == state.state:
        return state.model_copy(update=changes), None
    new = state.model_copy(update={**changes, "state": to, "last_transition_time": now})
    return new, Transition(state.state, to, reason, now)


def closed_fields() -> dict[str, Any]:
    """The counters, times and probe slots a closed breaker starts from (changes for `move_to`)."""
    return {
        "failure_count": 0,
        "success_count": 0,
        "opened_at": None,
        "retry_at": None,
        "probes": (),
    }


def _open_fields(policy: BreakerPolicy, now: datetime) -> dict[str, Any]:
    return {
        "success_count": 0,
        "opened_at": now,
        "retry_at": now + timedelta(seconds=policy.open_seconds),
        "probes": (),
    }


def release_probe(state: BreakerState, now: datetime, holder: str | None = None) -> BreakerState:
    """Give back a probe slot: the holder's, or with no holder the oldest anonymous one.

    Releasing a slot that is not held changes nothing, so a late or repeated report is harmless.
    """
    del now  # part of the uniform signature; releasing does not depend on time
    probes = list(state.probes)
    for index, lease in enumerate(probes):
        if lease.holder == holder:
            del probes[index]
            return state.model_copy(update={"probes": tuple(probes)})
    return state


def expire_probes(state: BreakerState, policy: BreakerPolicy, now: datetime) -> BreakerState:
    """Drop probe slots older than the probe timeout (their launches never reported back)."""
    limit = timedelta(seconds=policy.probe_timeout_seconds)
    kept = tuple(lease for lease in state.probes if now - lease.started_at < limit)
    if len(kept) == len(state.probes):
        return state
    return state.model_copy(update={"probes": kept})


def record_failure(
    state: BreakerState,
    policy: BreakerPolicy,
    error_type: ErrorType | str,
    message: str,
    now: datetime,
    *,
    holder: str | None = None,
) -> tuple[BreakerState, Transition | None]:
    """Record a failed launch.

    Only types with the `trips_breaker` flag count; any other failure just frees its probe slot.
    """
    now = as_utc(now)
    kind = ErrorType(error_type)
    state = release_probe(state, now, holder)
    if not flags(kind).trips_breaker:
        return state, None
    one_line = " ".join(message.split())[:_MESSAGE_LIMIT]
    failures = state.failure_count + 1
    counted: dict[str, Any] = {
        "failure_count": failures,
        "last_failure": LastFailure(type=kind.value, message=one_line, time=now),
    }
    if state.forced != ControlMode.AUTO:
        # Forced either way: keep the record visible but never move.
        return state.model_copy(update=counted), None
    if state.state == CircuitState.CLOSED:
        if failures >= policy.failure_threshold:
            return move_to(
                state, CircuitState.OPEN, REASON_THRESHOLD, now, **counted, **_open_fields(policy, now)
            )
        return state.model_copy(update=counted), None
    if state.state == CircuitState.HALF_OPEN:
        return move_to(
            state, CircuitState.OPEN, REASON_PROBE_FAILED, now, **counted, **_open_fields(policy, now)
        )
    # Open: a launch admitted before the breaker opened reports late; count it, keep retryAt.
    return state.model_copy(update=counted), None


def record_success(
    state: BreakerState, policy: BreakerPolicy, now: datetime, *, holder: str | None = None
) -> tuple[BreakerState, Transition | None]:
    """Record a launch that reached the user's code (whatever the code then did)."""
    now = as_utc(now)
    state = release_probe(state, now, holder)
    if state.state == CircuitState.CLOSED:
        if state.failure_count == 0:
            return state, None
        return state.model_copy(update={"failure_count": 0}), None
    if state.state == CircuitState.HALF_OPEN and state.forced == ControlMode.AUTO:
        successes = state.success_count + 1
        if successes >= policy.success_threshold:
            return move_to(state, CircuitState.CLOSED, REASON_PROBES_SUCCEEDED, now, **closed_fields())
        return state.model_copy(update={"success_count": successes}), None
    # Open (or forced open): a late success proves little about the infrastructure now.
    return state, None


def record_result(
    state: BreakerState,
    policy: BreakerPolicy,
    now: datetime,
    *,
    reached_user_code: bool,
    error_type: ErrorType | str | None = None,
    message: str = "",
    holder: str | None = None,
) -> tuple[BreakerState, Transition | None]:
    """Record how a launch ended: reaching the user's code is a success; else the error type decides."""
    if reached_user_code:
        return record_success(state, policy, now, holder=holder)
    if error_type is None:
        return release_probe(state, now, holder), None
    return record_failure(state, policy, error_type, message, now, holder=holder)


def advance(
    state: BreakerState, policy: BreakerPolicy, now: datetime
) -> tuple[BreakerState, Transition | None]:
    """Time-driven moves: open -> half_open once `retryAt` passed; expire stale probe slots.

    `admit` does this itself; a periodic timer can call it so `kubectl` shows half-open promptly.
    """
    now = as_utc(now)
    if state.state == CircuitState.OPEN and state.forced == ControlMode.AUTO:
        if state.retry_at is None or now >= state.retry_at:
            return move_to(state, CircuitState.HALF_OPEN, REASON_OPEN_ELAPSED, now, success_count=0, probes=())
        return state, None
    if state.state == CircuitState.HALF_OPEN:
        return expire_probes(state, policy, now), None
    return state, None


def admit(
    state: BreakerState, policy: BreakerPolicy, now: datetime, *, holder: str | None = None
) -> Admission:
    """Decide whether a launch may go ahead, taking a half-open probe slot when it does.

    A holder that already has a slot is admitted again without taking another, so a launch retried
    after an operator restart does not consume the half-open budget twice.
    """
    now = as_utc(now)
    recheck = now + timedelta(seconds=policy.open_seconds)
    if state.forced == ControlMode.FORCE_OPEN:
        return Admission(False, False, recheck, state)
    if state.forced == ControlMode.FORCE_CLOSED or state.state == CircuitState.CLOSED:
        return Admission(True, False, None, state)
    state, transition = advance(state, policy, now)
    if state.state == CircuitState.OPEN:
        return Admission(False, False, state.retry_at or recheck, state, transition)
    # Half-open.
    if holder is not None and any(lease.holder == holder for lease in state.probes):
        return Admission(True, True, None, state, transition)
    if len(state.probes) < policy.max_probes:
        lease = ProbeLease(holder=holder, started_at=now)
        new = state.model_copy(update={"probes": (*state.probes, lease)})
        return Admission(True, True, None, new, transition)
    earliest_expiry = min(lease.started_at for lease in state.probes) + timedelta(
        seconds=policy.probe_timeout_seconds
    )
    return Admission(False, False, min(recheck, earliest_expiry), state, transition)


def available_condition(
    state: BreakerState, now: datetime, observed_generation: int | None
) -> dict[str, Any]:
    """The ExecutionClass's `Available` condition (metav1.Condition shape) for this state.

    The message uses absolute times only, so an unchanged state yields an unchanged condition.
    """
    failures = f"{state.failure_count} infrastructure failure(s)"
    last = f", last {state.last_failure.type}" if state.last_failure else ""
    if state.state == CircuitState.CLOSED:
        status, reason = ConditionStatus.TRUE, ConditionReason.CIRCUIT_CLOSED
        message = f"circuit closed; {state.failure_count} consecutive infrastructure failure(s){last}"
        if state.forced == ControlMode.FORCE_CLOSED:
            message += f"; forced closed by annotation {ANNOTATION_CIRCUIT_BREAKER}"
    elif state.state == CircuitState.OPEN:
        status, reason = ConditionStatus.FALSE, ConditionReason.CIRCUIT_OPEN
        since = f" since {format_time(state.opened_at)}" if state.opened_at else ""
        if state.forced == ControlMode.FORCE_OPEN:
            message = f"circuit forced open by annotation {ANNOTATION_CIRCUIT_BREAKER}{since}; {failures}{last}"
        else:
            after = f"; probes allowed after {format_time(state.retry_at)}" if state.retry_at else ""
            message = f"circuit open{since}; {failures}{last}{after}"
    else:
        status, reason = ConditionStatus.UNKNOWN, ConditionReason.CIRCUIT_HALF_OPEN
        message = (
            f"circuit half-open; {state.success_count} probe success(es), "
            f"{state.probes_in_flight} probe(s) in flight; {failures}{last}"
        )
    condition: dict[str, Any] = {
        # Plain strings: the condition is stored and compared as JSON.
        "type": str(AVAILABLE),
        "status": str(status),
        "reason": str(reason),
        "message": message,
        "lastTransitionTime": format_time(state.last_transition_time or now),
    }
    if observed_generation is not None:
        condition["observedGeneration"] = observed_generation
    return condition


_GAUGE = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}


def state_gauge_value(state: BreakerState | CircuitState | str) -> int:
    """`sandbox_circuit_breaker_state`: 0 closed, 1 half-open, 2 open."""
    name = state.state if isinstance(state, BreakerState) else CircuitState(state)
    return _GAUGE[name]
