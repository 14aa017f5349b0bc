"""Manual control of an ExecutionClass's circuit breaker, through two annotations on the class.

`sandbox.dev/circuit-breaker` forces the breaker (`force-open`, `force-closed`, or `auto`, the default)
and every new value of `sandbox.dev/circuit-breaker-reset` resets it once. `apply_control` turns the
annotations into steps of the state machine in `breaker`; like it, everything here is pure: the state
and the time in, the new state and its transitions out.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from execution_operator.api import ANNOTATION_CIRCUIT_BREAKER, ANNOTATION_CIRCUIT_BREAKER_RESET
from execution_operator.breaker import (
    REASON_FORCED_CLOSED,
    REASON_FORCED_OPEN,
    REASON_RESET,
    BreakerState,
    CircuitState,
    ControlMode,
    Transition,
    as_utc,
    closed_fields,
    move_to,
)

#: Annotation forcing the breaker: `force-open`, `force-closed` or `auto` (the default).
MODE_ANNOTATION = ANNOTATION_CIRCUIT_BREAKER
#: Annotation whose every new value resets the breaker once.
RESET_ANNOTATION = ANNOTATION_CIRCUIT_BREAKER_RESET


def parse_mode(value: str | None) -> ControlMode | None:
    """Parse the annotation leniently (`Force_Open` works); `None` for a value we do not know.

    An empty or absent annotation means `auto`.
    """
    if value is None or not value.strip():
        return ControlMode.AUTO
    normal = value.strip().lower().replace("_", "-")
    try:
        return ControlMode(normal)
    except ValueError:
        return None


def force_open(state: BreakerState, now: datetime) -> tuple[BreakerState, Transition | None]:
    """Hold the breaker open until the mode goes back to `auto` (e.g. during maintenance)."""
    now = as_utc(now)
    if state.forced == ControlMode.FORCE_OPEN:
        return state, None
    opened_at = state.opened_at if state.state == CircuitState.OPEN and state.opened_at else now
    return move_to(
        state,
        CircuitState.OPEN,
        REASON_FORCED_OPEN,
        now,
        forced=ControlMode.FORCE_OPEN,
        opened_at=opened_at,
        retry_at=None,
        success_count=0,
        probes=(),
    )


def force_closed(state: BreakerState, now: datetime) -> tuple[BreakerState, Transition | None]:
    """Admit everything and never trip until the mode goes back to `auto`."""
    now = as_utc(now)
    if state.forced == ControlMode.FORCE_CLOSED:
        return state, None
    return move_to(
        state,
        CircuitState.CLOSED,
        REASON_FORCED_CLOSED,
        now,
        forced=ControlMode.FORCE_CLOSED,
        **closed_fields(),
    )


def set_auto(state: BreakerState, now: datetime) -> tuple[BreakerState, Transition | None]:
    """Leave forced mode.

    Leaving force-open makes the next launch a probe rather than closing outright, so a still-broken class
    does not get a flood of launches.
    """
    now = as_utc(now)
    if state.forced == ControlMode.FORCE_OPEN:
        return state.model_copy(update={"forced": ControlMode.AUTO, "retry_at": now}), None
    if state.forced == ControlMode.FORCE_CLOSED:
        return state.model_copy(update={"forced": ControlMode.AUTO, **closed_fields()}), None
    return state, None


def reset(state: BreakerState, now: datetime) -> tuple[BreakerState, Transition | None]:
    """Clear counters and probe slots and close the breaker; a forced-open breaker stays open.

    `lastFailure` is kept as history.
    """
    now = as_utc(now)
    if state.forced == ControlMode.FORCE_OPEN:
        return state.model_copy(update={"failure_count": 0, "success_count": 0, "probes": ()}), None
    return move_to(state, CircuitState.CLOSED, REASON_RESET, now, **closed_fields())


def apply_control(
    state: BreakerState, annotations: Mapping[str, str] | None, now: datetime
) -> tuple[BreakerState, list[Transition]]:
    """Apply the ExecutionClass's control annotations; idempotent for unchanged annotations.

    A new value of `sandbox.dev/circuit-breaker-reset` resets once (the value is kept in
    `lastReset`); then `sandbox.dev/circuit-breaker` sets the mode. An unknown mode value leaves the
    mode as it is rather than guessing.
    """
    annotations = annotations or {}
    transitions: list[Transition] = []
    reset_value = annotations.get(RESET_ANNOTATION)
    if reset_value and reset_value != state.last_reset:
        state, transition = reset(state, now)
        state = state.model_copy(update={"last_reset": reset_value})
        if transition:
            transitions.append(transition)
    mode = parse_mode(annotations.get(MODE_ANNOTATION))
    if mode is not None and mode != state.forced:
        step = {ControlMode.FORCE_OPEN: force_open, ControlMode.FORCE_CLOSED: force_closed}.get(
            mode, set_auto
        )
        state, transition = step(state, now)
        if transition:
            transitions.append(transition)
    return state, transitions
