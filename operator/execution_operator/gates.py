"""Launch gating per ExecutionClass: the circuit breaker held in the class's status.

The closed, healthy breaker is the common case and costs nothing: no read, no write. Only when the
cached class shows failures, an open or half-open circuit, or a control annotation, does a launch
go through the guarded read-modify-write in `breaker_store`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from execution_operator import metrics
from execution_operator.api import API_VERSION, EXECUTION_CLASSES, EventReason, EventType, Kind
from execution_operator.breaker import BreakerState, CircuitState, ControlMode, Transition, state_gauge_value
from execution_operator.breaker_control import MODE_ANNOTATION, RESET_ANNOTATION, parse_mode
from execution_operator.breaker_store import admit_launch, breaker_of, record_launch, sync_breaker
from execution_operator.errors import ErrorInfo, flags
from execution_operator.k8s import MERGE_PATCH, ApiError, KubeClient, path_for, resource_version
from execution_operator.timestamps import rfc3339 as format_time

log = structlog.get_logger("execution_operator.gates")


@dataclass(frozen=True)
class GateAdmission:
    """Whether a launch may go ahead now; if not, `message` says why and `retry_at` when to ask again."""

    allowed: bool
    message: str = ""
    retry_at: str | None = None
    probe: bool = False


def holder_of(key: tuple[str, str], attempt: int) -> str:
    """The probe-slot holder of one attempt (`ns/name#attempt`), so that its slot can be given back."""
    return f"{key[0]}/{key[1]}#{attempt}"


class _CachingClient:
    """Passes requests through and keeps the freshest ExecutionClass it sees in the shared cache.

    The breaker's read-modify-write starts from the cached object; keeping it current means the
    guarded write rarely meets a conflict of our own making.
    """

    def __init__(self, client: KubeClient, cache: dict[str, dict[str, Any]]) -> None:
        self.client = client
        self.cache = cache

    def _keep(self, obj: dict[str, Any]) -> dict[str, Any]:
        if obj.get("kind") == Kind.EXECUTION_CLASS:
            name = obj["metadata"]["name"]
            current = self.cache.get(name)
            if current is None or resource_version(obj) >= resource_version(current):
                self.cache[name] = obj
        return obj

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        return self._keep(await self.client.get(path, params))

    async def patch(self, path: str, body: Any, *, content_type: str = MERGE_PATCH) -> dict[str, Any]:
        return self._keep(await self.client.patch(path, body, content_type=content_type))


class Gates:
    """Admits launches and records their outcomes in the breaker of each ExecutionClass."""

    def __init__(
        self,
        client: KubeClient,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        classes: dict[str, dict[str, Any]] | None = None,
        post_event: Callable[[Mapping[str, Any], str, str, str], None] | None = None,
    ) -> None:
        self.client = client
        self.clock = clock
        self.classes: dict[str, dict[str, Any]] = classes if classes is not None else {}
        self.post_event = post_event
        self.sync_timers: dict[str, asyncio.TimerHandle] = {}
        self.store_client = _CachingClient(client, self.classes)
        #: One breaker update at a time per class in this process: replicas still meet 409s and retry.
        self.locks: dict[str, asyncio.Lock] = {}

    def _lock(self, class_name: str) -> asyncio.Lock:
        return self.locks.setdefault(class_name, asyncio.Lock())

    def _state(self, class_name: str) -> BreakerState:
        body = self.classes.get(class_name) or {}
        return breaker_of(body)

    def _quiet(self, class_name: str) -> bool:
        """Closed, no failures counted, no control annotation pending: nothing to gate or record."""
        body = self.classes.get(class_name)
        if body is None:
            return False
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        state = self._state(class_name)
        if annotations.get(RESET_ANNOTATION) and annotations[RESET_ANNOTATION] != state.last_reset:
            return False
        if not self._mode_matches(annotations.get(MODE_ANNOTATION), state):
            return False
        return state.state == CircuitState.CLOSED and state.failure_count == 0 and not state.probes

    async def admit(self, class_name: str, key: tuple[str, str], attempt: int) -> GateAdmission:
        """Ask the class's breaker whether this attempt may launch; a quiet, closed breaker answers without a write."""
        if self._quiet(class_name):
            return GateAdmission(allowed=True)
        async with self._lock(class_name):
            admission, transitions = await admit_launch(
                self.store_client, class_name, holder=holder_of(key, attempt), clock=self.clock,
                initial=self.classes.get(class_name),
            )
        self._announce(class_name, admission.new_state, transitions)
        if admission.allowed:
            return GateAdmission(allowed=True, probe=admission.probe)
        # Rounded up to the whole second: rounded down, a held Execution would come back just
        # before retryAt, be refused again and spend a retry attempt for nothing.
        retry_at = format_time(admission.retry_at + timedelta(microseconds=999_999)) if admission.retry_at else None
        state = admission.new_state
        if state.forced == ControlMode.FORCE_OPEN:
            message = (
                f'ExecutionClass "{class_name}" circuit is forced open by the annotation {MODE_ANNOTATION}; '
                "no launch until it is set to auto or force-closed"
            )
        else:
            why = f"last failure {state.last_failure.type}" if state.last_failure else "open"
            message = (
                f'ExecutionClass "{class_name}" circuit is open ({why}, {state.failure_count} infrastructure '
                f"failures); no launch until {retry_at or 'it closes'}"
            )
        if retry_at:
            self._schedule_sync(class_name, admission.retry_at)
        return GateAdmission(allowed=False, message=message, retry_at=retry_at)

    async def record(
        self, class_name: str, key: tuple[str, str], attempt: int, *, reached_user_code: bool,
        error: ErrorInfo | None = None,
    ) -> None:
        """Tell the breaker how a launch ended; skipped when it cannot change anything."""
        trips = error is not None and flags(error.type).trips_breaker
        if self._quiet(class_name) and not trips:
            return
        async with self._lock(class_name):
            state, transitions = await record_launch(
                self.store_client, class_name, reached_user_code=reached_user_code,
                error_type=error.type if trips and error else None,
                message=error.message if error else "", holder=holder_of(key, attempt), clock=self.clock,
                initial=self.classes.get(class_name),
            )
        self._announce(class_name, state, transitions)

    # -- the ExecutionClass cache: fed by the watch, filled on a miss, shared with the breaker store

    def cached_class(self, name: str) -> dict[str, Any] | None:
        """The latest body of class `name` this process has seen, if any."""
        return self.classes.get(name)

    def class_names(self) -> list[str]:
        """The names of the cached classes, sorted."""
        return sorted(self.classes)

    async def get_class(self, name: str) -> dict[str, Any] | None:
        """The class `name` (cached, else read once); None if it does not exist."""
        cached = self.classes.get(name)
        if cached is not None:
            return cached
        try:
            body = await self.client.get(path_for(API_VERSION, EXECUTION_CLASSES, None, name))
        except ApiError as exc:
            if exc.not_found:
                return None
            raise
        self.classes[name] = body
        return body

    async def on_class_event(self, body: Mapping[str, Any], event_type: str | None) -> None:
        """Keep the class cache current and act on breaker annotations and timed moves the event reveals."""
        name = body["metadata"]["name"]
        if event_type == "DELETED":
            self.classes.pop(name, None)
            timer = self.sync_timers.pop(name, None)
            if timer:
                timer.cancel()
            return
        current = self.classes.get(name)
        if current is None or resource_version(body) >= resource_version(current):
            self.classes[name] = dict(body)
        state = breaker_of(body)
        metrics.set_breaker_state(name, state_gauge_value(state))
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        control_pending = (
            bool(annotations.get(RESET_ANNOTATION)) and annotations[RESET_ANNOTATION] != state.last_reset
        ) or not self._mode_matches(annotations.get(MODE_ANNOTATION), state)
        never_written = not (body.get("status") or {}).get("conditions")
        if control_pending or never_written:
            await self.sync(name, body)
        elif state.state == CircuitState.OPEN and state.retry_at is not None:
            self._schedule_sync(name, state.retry_at)

    @staticmethod
    def _mode_matches(annotation: str | None, state: BreakerState) -> bool:
        mode = parse_mode(annotation)
        return mode is None or mode == state.forced

    async def sync(self, class_name: str, body: Mapping[str, Any] | None = None) -> None:
        """Persist the breaker's timed moves and requested changes; a failure is logged and left to the next event."""
        try:
            async with self._lock(class_name):
                state, transitions = await sync_breaker(self.store_client, class_name, clock=self.clock,
                                                        initial=self.classes.get(class_name) or body)
        except Exception as exc:  # noqa: BLE001 - a later event or timer syncs again
            log.warning("breaker sync failed", execution_class=class_name, error=str(exc)[:300])
            return
        self._announce(class_name, state, transitions)

    def _schedule_sync(self, class_name: str, when: datetime | None) -> None:
        """Move open -> half_open in status when retryAt passes, so kubectl shows it promptly."""
        if when is None:
            return
        loop = asyncio.get_running_loop()
        old = self.sync_timers.pop(class_name, None)
        if old:
            old.cancel()
        delay = max(0.0, (when - self.clock()).total_seconds()) + 0.05
        self.sync_timers[class_name] = loop.call_later(
            delay, lambda: asyncio.ensure_future(self.sync(class_name))
        )

    def _announce(self, class_name: str, state: BreakerState, transitions: list[Transition]) -> None:
        metrics.set_breaker_state(class_name, state_gauge_value(state))
        body = self.classes.get(class_name) or {
            "apiVersion": API_VERSION, "kind": Kind.EXECUTION_CLASS, "metadata": {"name": class_name},
        }
        for transition in transitions:
            metrics.record_breaker_transition(class_name, transition.to)
            log.info("circuit breaker transition", execution_class=class_name, to=transition.to,
                     reason=transition.reason)
            if self.post_event is not None:
                etype = EventType.WARNING if transition.to_state == CircuitState.OPEN else EventType.NORMAL
                reason = {"open": EventReason.CIRCUIT_OPEN, "half_open": EventReason.CIRCUIT_HALF_OPEN,
                          "closed": EventReason.CIRCUIT_CLOSED}[
                    transition.to
                ]
                self.post_event(
                    body, etype, reason,
                    f"circuit breaker {transition.from_state.value} -> {transition.to} ({transition.reason})",
                )
