"""Persistence of the circuit breaker in its ExecutionClass's status, safe under concurrent writers.

Every change is a read-modify-write: GET the class, apply a pure step from `breaker` to the
`status.circuitBreaker` it holds, and write the result back with a JSON merge patch that carries
the `metadata.resourceVersion` that was read. The API server refuses such a patch with 409 Conflict
when anyone wrote the object in between; the step is then re-applied to a fresh read. A plain merge
patch (kopf's default status patch) would be unconditional and could lose a count or move the state
backwards when two writers interleave, so it is never used here.

Nothing is written when the step changes nothing, so gating a launch on a closed breaker costs one
GET (or none, when the caller passes a cached object).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import structlog

from .api import API_VERSION, EXECUTION_CLASSES
from .breaker import (
    AVAILABLE,
    Admission,
    BreakerPolicy,
    BreakerState,
    Transition,
    admit,
    advance,
    available_condition,
    record_result,
)
from .breaker_control import apply_control
from .errors import ErrorType
from .retry import backoff_delay

T = TypeVar("T")

MERGE_PATCH = "application/merge-patch+json"
#: Upper bound of one wait between conflicting writes.
_MAX_CONFLICT_BACKOFF = 1.0

log = structlog.get_logger(__name__)


class KubeClient(Protocol):
    """The slice of `execution_operator.k8s.KubeClient` this module needs.

    Errors are raised as exceptions with an integer `status` (the HTTP code), as `k8s.ApiError` does.
    """

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Read one object, as `k8s.KubeClient.get`."""

    async def patch(self, path: str, body: Any, *, content_type: str = MERGE_PATCH) -> dict[str, Any]:
        """Patch one object, as `k8s.KubeClient.patch`."""


class BreakerConflictError(RuntimeError):
    """The class kept changing under us for `max_conflicts` attempts in a row."""


def class_path(class_name: str) -> str:
    """The API path of an ExecutionClass, whose status holds its breaker."""
    return f"/apis/{API_VERSION}/{EXECUTION_CLASSES}/{class_name}"


def utcnow() -> datetime:
    """The default clock (aware UTC); tests pass their own."""
    return datetime.now(UTC)


def _http_status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def _is_conflict(exc: BaseException) -> bool:
    # A stale resourceVersion in a merge patch answers 409 Conflict. (A 422 here would be a schema
    # rejection, not a race: this module never sends JSON-patch `test` ops.)
    return _http_status(exc) == 409 and getattr(exc, "reason", "") != "AlreadyExists"


def policy_of(obj: Mapping[str, Any]) -> BreakerPolicy:
    """The breaker policy of an ExecutionClass object (its `spec.circuitBreaker`)."""
    spec = obj.get("spec") or {}
    pending = spec.get("pendingTimeoutSeconds")
    return BreakerPolicy.from_spec(
        spec.get("circuitBreaker"), pending_timeout_seconds=float(pending) if pending is not None else None
    )


def breaker_of(obj: Mapping[str, Any]) -> BreakerState:
    """The breaker state held in an ExecutionClass object (closed if it has none yet)."""
    return BreakerState.from_status((obj.get("status") or {}).get("circuitBreaker"))


def status_patch(obj: Mapping[str, Any], new_state: BreakerState, now: datetime) -> dict[str, Any] | None:
    """The guarded merge patch that stores `new_state` in `obj`, or None when nothing would change.

    Only the `Available` condition is replaced; other conditions are kept as read (the
    resourceVersion guard makes sure they are still current). Its `lastTransitionTime` is kept
    while its status stays the same, as metav1 conditions require.
    """
    metadata = obj.get("metadata") or {}
    status = obj.get("status") or {}
    conditions = [dict(c) for c in status.get("conditions") or []]
    old_condition = next((c for c in conditions if c.get("type") == AVAILABLE), None)
    condition = available_condition(new_state, now, metadata.get("generation"))
    if old_condition is not None and old_condition.get("status") == condition["status"]:
        condition["lastTransitionTime"] = old_condition.get("lastTransitionTime", condition["lastTransitionTime"])
    if breaker_of(obj) == new_state and old_condition == condition:
        return None
    if old_condition is None:
        conditions.append(condition)
    else:
        conditions = [condition if c.get("type") == AVAILABLE else c for c in conditions]
    return {
        "metadata": {"resourceVersion": metadata.get("resourceVersion")},
        "status": {"circuitBreaker": new_state.to_status(), "conditions": conditions},
    }


async def update_breaker_object(
    client: KubeClient,
    class_name: str,
    step: Callable[[BreakerState, Mapping[str, Any]], tuple[BreakerState, T]],
    *,
    max_conflicts: int = 10,
    clock: Callable[[], datetime] = utcnow,
    initial: Mapping[str, Any] | None = None,
    conflict_backoff: float = 0.01,
    rng: random.Random | None = None,
) -> tuple[BreakerState, T]:
    """Read-modify-write of the breaker; `step` also sees the whole ExecutionClass object.

    `step` must be pure: after a conflict it runs again on the fresh object and only the result of
    its last run counts. `initial` (e.g. kopf's copy of the object) saves the first GET; if it is
    stale, the guarded write fails and the loop re-reads. Raises `BreakerConflictError` after
    `max_conflicts` conflicts in a row; any other API error propagates.
    """
    path = class_path(class_name)
    jitter = rng or random.Random()
    obj: Mapping[str, Any] = initial if initial is not None else await client.get(path)
    for conflict in range(max_conflicts + 1):
        state = breaker_of(obj)
        new_state, result = step(state, obj)
        patch = status_patch(obj, new_state, clock())
        if patch is None:
            return new_state, result
        try:
            written = await client.patch(f"{path}/status", patch, content_type=MERGE_PATCH)
        except Exception as exc:
            if not _is_conflict(exc):
                raise
            log.debug("breaker write conflict, re-reading", execution_class=class_name, conflict=conflict + 1)
            # Full-jitter exponential backoff from a few milliseconds: when many launches of one
            # class report at once, it spreads the writers out instead of making them collide again.
            await asyncio.sleep(backoff_delay(conflict + 1, conflict_backoff, _MAX_CONFLICT_BACKOFF, jitter))
            obj = await client.get(path)
            continue
        stored = breaker_of(written) if written.get("status") else new_state
        if stored != new_state:
            # The CRD's status schema dropped fields (e.g. probe slots): gating would degrade.
            log.warning(
                "breaker status not stored as written",
                execution_class=class_name,
                written=new_state.to_status(),
                stored=stored.to_status(),
            )
        return new_state, result
    raise BreakerConflictError(
        f"circuit breaker of ExecutionClass {class_name!r}: {max_conflicts} write conflicts in a row"
    )


async def update_breaker(
    client: KubeClient,
    class_name: str,
    mutate: Callable[[BreakerState], tuple[BreakerState, T]],
    *,
    max_conflicts: int = 10,
    clock: Callable[[], datetime] = utcnow,
    initial: Mapping[str, Any] | None = None,
    conflict_backoff: float = 0.01,
) -> tuple[BreakerState, T]:
    """Apply the pure `mutate` to the stored breaker with optimistic concurrency.

    Returns the state as written and what `mutate` returned; see `update_breaker_object`.
    """
    return await update_breaker_object(
        client,
        class_name,
        lambda state, _obj: mutate(state),
        max_conflicts=max_conflicts,
        clock=clock,
        initial=initial,
        conflict_backoff=conflict_backoff,
    )


def _controlled(state: BreakerState, obj: Mapping[str, Any], now: datetime) -> tuple[BreakerState, list[Transition]]:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return apply_control(state, annotations, now)


async def admit_launch(
    client: KubeClient,
    class_name: str,
    *,
    holder: str | None = None,
    clock: Callable[[], datetime] = utcnow,
    initial: Mapping[str, Any] | None = None,
) -> tuple[Admission, list[Transition]]:
    """Gate one launch of `class_name`: apply the control annotations, then `breaker.admit`.

    Returns the admission and every transition made (control first), for Events and metrics.
    `holder` should identify the launch (e.g. `namespace/name#attempt`) so a probe slot is not taken
    twice when the launch is retried and is given back when its result is recorded.
    """

    def step(state: BreakerState, obj: Mapping[str, Any]) -> tuple[BreakerState, tuple[Admission, list[Transition]]]:
        now = clock()
        state, transitions = _controlled(state, obj, now)
        admission = admit(state, policy_of(obj), now, holder=holder)
        if admission.transition is not None:
            transitions.append(admission.transition)
        return admission.new_state, (admission, transitions)

    _, result = await update_breaker_object(client, class_name, step, clock=clock, initial=initial)
    return result


async def record_launch(
    client: KubeClient,
    class_name: str,
    *,
    reached_user_code: bool,
    error_type: ErrorType | str | None = None,
    message: str = "",
    holder: str | None = None,
    clock: Callable[[], datetime] = utcnow,
    initial: Mapping[str, Any] | None = None,
) -> tuple[BreakerState, list[Transition]]:
    """Record how a launch ended (see `breaker.record_result`) and return the transitions made."""

    def step(state: BreakerState, obj: Mapping[str, Any]) -> tuple[BreakerState, list[Transition]]:
        now = clock()
        state, transitions = _controlled(state, obj, now)
        state, transition = record_result(
            state,
            policy_of(obj),
            now,
            reached_user_code=reached_user_code,
            error_type=error_type,
            message=message,
            holder=holder,
        )
        if transition is not None:
            transitions.append(transition)
        return state, transitions

    return await update_breaker_object(client, class_name, step, clock=clock, initial=initial)


async def sync_breaker(
    client: KubeClient,
    class_name: str,
    *,
    clock: Callable[[], datetime] = utcnow,
    initial: Mapping[str, Any] | None = None,
) -> tuple[BreakerState, list[Transition]]:
    """Apply the control annotations and time-driven moves (open -> half_open, stale probes).

    For the ExecutionClass handlers and a periodic timer: it keeps `kubectl get exc` truthful and
    makes an annotation take effect without waiting for the next launch.
    """

    def step(state: BreakerState, obj: Mapping[str, Any]) -> tuple[BreakerState, list[Transition]]:
        now = clock()
        state, transitions = _controlled(state, obj, now)
        state, transition = advance(state, policy_of(obj), now)
        if transition is not None:
            transitions.append(transition)
        return state, transitions

    return await update_breaker_object(client, class_name, step, clock=clock, initial=initial)
