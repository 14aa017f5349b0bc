"""The Execution controller: a level-triggered reconcile loop over (Execution, its current pod, now).

kopf delivers raw watch events (no kopf writes per object); every event, pod event or timer runs
`reconcile(key)` under a per-Execution lock, which looks at the freshest known Execution body and pod
and takes the next step. Status writes are merge patches guarded by `metadata.resourceVersion`, so an
older view never overwrites a newer one; a conflict re-reads and re-decides. Names are deterministic
per attempt, so a step repeated after a crash finds what the first try made.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pydantic
import structlog

from execution_operator import metrics, safejson
from execution_operator import status as st
from execution_operator.api import (
    API_VERSION,
    EXECUTIONS,
    LABEL_ATTEMPT,
    LABEL_CLAIMED_FROM,
    LABEL_EXECUTION,
    LABEL_EXECUTION_CLASS,
    TERMINAL_PHASES,
    ConditionReason,
    ConditionType,
    EventReason,
    EventType,
    Kind,
    Launch,
    Phase,
)
from execution_operator.attempt_plan import EndPlan, RetryPlan, end_event, plan_after_attempt, retry_event
from execution_operator.bodies import (
    Key,
    condition_reason,
    container_started_at,
    correlation_id,
    duration_seconds,
    execution_owner,
    key_of,
    slim_pod,
)
from execution_operator.classify import (
    Verdict,
    classify_create_error,
    classify_finished_pod,
    classify_stuck_pod,
    classify_vanished_pod,
    pod_finished,
    report_lines_expected,
)
from execution_operator.deadletters import DeadLetters
from execution_operator.errors import ErrorInfo, ErrorType
from execution_operator.gates import Gates
from execution_operator.k8s import ApiError, KubeClient, path_for, post_event, resource_version
from execution_operator.models import (
    MAX_INPUT_DEPTH,
    DeadLetterPolicy,
    ExecutionClassSpec,
    ExecutionSpec,
)
from execution_operator.pools import WarmPools
from execution_operator.report_parsing import log_holds_full_report
from execution_operator.sandbox import (
    ExecutionRef,
    PayloadTooLarge,
    build_carrier,
    build_pod,
    deny_all_network_policy,
    label_value,
    pod_name,
    uses_configmap_carrier,
)
from execution_operator.status import is_terminal, parse_time, rfc3339
from execution_operator.validation import validate_execution
from execution_operator.warmpool import PAYLOAD_MARKER, claimed_for, handed_over

log = structlog.get_logger("execution_operator.controller")

LOG_TAIL_LINES = 32
#: The runtime copies stdout and stderr to the log apart, so up to a pipe's worth of the code's stderr
#: can land after the runner's report line; when the short tail misses it, a longer one is read.
LOG_TAIL_LINES_WIDE = 2000
#: How far apart the API server's clock and ours may be when deciding what predates this process.
CLOCK_MARGIN_SECONDS = 2.0
RECONCILE_ERROR_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
#: Reconciles in a row that may fail to read a finished pod's log before the attempt ends without it
#: (each after the client's own retries, RECONCILE_ERROR_BACKOFF apart: about 20 s in all).
LOG_READ_ROUNDS = 5


def now_utc() -> datetime:
    """The controller's default clock (aware UTC)."""
    return datetime.now(UTC)


class Conflict(Exception):
    """Our view of the Execution was stale: re-read and decide again."""


@dataclass
class _Timer:
    when: float
    handle: asyncio.TimerHandle


class Controller:
    """Holds the client, small caches fed by watch events, per-Execution locks and wake-up timers."""

    def __init__(
        self,
        client: KubeClient,
        *,
        clock: Callable[[], datetime] = now_utc,
        rng: random.Random | None = None,
        gates: Gates | None = None,
        dead_letters: DeadLetters | None = None,
    ) -> None:
        self.client = client
        self.clock = clock
        self.rng = rng or random.Random()
        self.gates = gates or Gates(client, clock=clock, post_event=self._event)
        self.dead_letters = dead_letters
        self.executions: dict[Key, dict[str, Any]] = {}
        #: (uid, resourceVersion) of finished Executions, to ignore late echoes of earlier writes.
        self.finished: dict[Key, tuple[str, int]] = {}
        self.pods: dict[Key, dict[str, Any]] = {}
        self.vanished: dict[Key, dict[str, Any]] = {}
        self.locks: dict[Key, asyncio.Lock] = {}
        self.timers: dict[Key, _Timer] = {}
        self.error_counts: dict[Key, int] = {}
        self.network_policies: set[str] = set()
        self.network_policy_locks: dict[str, asyncio.Lock] = {}
        self.queued: dict[str, set[Key]] = {}
        self.phases: dict[Key, tuple[str, str]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.pools = WarmPools(client, self.gates, classes=self.gates.classes, clock=clock,
                               ensure_network_policy=self._ensure_network_policy)
        #: Executions created before this process started may have warm pods claimed by its predecessor.
        self.started_at = clock()

    # ----------------------------------------------------------------- watch events

    async def on_execution_event(self, body: Mapping[str, Any], event_type: str | None) -> None:
        """Cache the Execution from a watch event and reconcile it; a deletion forgets it."""
        key = key_of(body)
        if event_type == "DELETED":
            self._forget(key)
            return
        self._remember(key, body)
        await self.reconcile(key)

    async def on_pod_event(self, body: Mapping[str, Any], event_type: str | None) -> None:
        """Cache an Execution's pod and reconcile its owner; a pod that ends frees its class's queue slot.

        Pods of warm pools (unclaimed, or claimed from one) also go to the pools.
        """
        if self.pools.owns(body):
            await self.pools.on_pod_event(body, event_type)
        meta = body.get("metadata", {})
        pkey = (meta.get("namespace", ""), meta.get("name", ""))
        owner = execution_owner(body)
        key = (pkey[0], owner or "")
        # Pods of finished Executions are not kept: the cache holds only what a decision may need.
        keep = owner is not None and key not in self.finished
        if event_type == "DELETED":
            self.pods.pop(pkey, None)
            if keep:
                self.vanished[pkey] = slim_pod(body)
        elif keep:
            current = self.pods.get(pkey)
            if current is None or resource_version(body) >= resource_version(current):
                self.pods[pkey] = slim_pod(body)
        if owner is None:
            return
        if key in self.executions:
            await self.reconcile(key)
        if event_type == "DELETED" or pod_finished(body):
            self._release_queue_slot(str(meta.get("labels", {}).get(LABEL_EXECUTION_CLASS, "")))

    async def on_class_event(self, body: Mapping[str, Any], event_type: str | None) -> None:
        """Class events feed the gates, which keep the class cache and the breakers."""
        await self.gates.on_class_event(body, event_type)
        await self.pools.on_class_event(str(body["metadata"]["name"]))

    async def on_pool_event(self, body: Mapping[str, Any], event_type: str | None) -> None:
        """WarmPool events go to the pools."""
        await self.pools.on_pool_event(body, event_type)

    # ----------------------------------------------------------------- caches and timers

    def _remember(self, key: Key, body: Mapping[str, Any]) -> None:
        done = self.finished.get(key)
        if done is not None and done[0] == body["metadata"].get("uid") and resource_version(body) < done[1]:
            return  # a late echo of a write made before the Execution finished
        current = self.executions.get(key)
        newer = current is None or resource_version(body) >= resource_version(current)
        if newer or current is None or current["metadata"].get("uid") != body["metadata"].get("uid"):
            self.executions[key] = dict(body)

    def _forget(self, key: Key) -> None:
        self.executions.pop(key, None)
        self.finished.pop(key, None)
        self.error_counts.pop(key, None)
        timer = self.timers.pop(key, None)
        if timer:
            timer.handle.cancel()
        self._track_phase(key, None, None)
        for waiting in self.queued.values():
            waiting.discard(key)

    def class_label(self, name: str) -> str:
        """A class as the metrics name it: only classes that exist, so tenants cannot grow the series."""
        return name if self.gates.cached_class(name) is not None else metrics.UNKNOWN

    def _track_phase(self, key: Key, cls: str | None, phase: str | None) -> None:
        """Keep the in-flight gauge by (class, phase) in step with what we last saw."""
        before = self.phases.get(key)
        cls = self.class_label(cls) if cls else None
        after = (cls, phase) if cls and phase and phase not in TERMINAL_PHASES else None
        if before == after:
            return
        if before:
            metrics.move_in_flight(before[0], before[1], None)
            self.phases.pop(key, None)
        if after:
            metrics.move_in_flight(after[0], None, after[1])
            self.phases[key] = after

    def wake_at(self, key: Key, when: datetime) -> None:
        """Reconcile `key` again at `when` (the earliest requested time wins)."""
        loop = asyncio.get_running_loop()
        delay = max(0.0, (when - self.clock()).total_seconds())
        at = loop.time() + delay
        existing = self.timers.get(key)
        if existing and existing.when <= at and not existing.handle.cancelled():
            return
        if existing:
            existing.handle.cancel()

        def fire() -> None:
            self.timers.pop(key, None)
            self._spawn(self._wake(key))

        self.timers[key] = _Timer(at, loop.call_at(at, fire))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _wake(self, key: Key) -> None:
        """A timer's wake-up; a failed read schedules another one (a lost timer would never fire)."""
        if key not in self.executions:
            try:
                body = await self.client.get(path_for(API_VERSION, EXECUTIONS, key[0], key[1]))
            except ApiError as exc:
                if not exc.not_found:
                    self._reconcile_failed(key, exc)
                return
            except Exception as exc:  # noqa: BLE001 - one object's failure is logged, counted and retried
                self._reconcile_failed(key, exc)
                return
            self._remember(key, body)
        await self.reconcile(key)

    # ----------------------------------------------------------------- reconcile

    async def reconcile(self, key: Key) -> None:
        """Reconcile one Execution from the caches, one at a time per Execution; a conflict re-reads and retries."""
        lock = self.locks.setdefault(key, asyncio.Lock())
        async with lock:
            try:
                for _ in range(8):
                    body = self.executions.get(key)
                    if body is None:
                        return
                    try:
                        await self._reconcile_once(key, body)
                        break
                    except Conflict:
                        await self._refresh(key)
                self.error_counts.pop(key, None)
            except ApiError as exc:
                if exc.not_found and key not in self.executions:
                    return
                self._reconcile_failed(key, exc)
            except Exception as exc:  # noqa: BLE001 - one object's failure is logged, counted and retried
                self._reconcile_failed(key, exc)
            finally:
                if key not in self.executions and not lock.locked():
                    self.locks.pop(key, None)

    def _reconcile_failed(self, key: Key, exc: BaseException) -> None:
        count = self.error_counts.get(key, 0)
        self.error_counts[key] = count + 1
        delay = RECONCILE_ERROR_BACKOFF[min(count, len(RECONCILE_ERROR_BACKOFF) - 1)]
        if isinstance(exc, ApiError) and exc.retry_after:
            delay = max(delay, min(exc.retry_after, RECONCILE_ERROR_BACKOFF[-1]))
        metrics.record_reconcile_error(Kind.EXECUTION)
        log.warning("reconcile failed; will retry", namespace=key[0], execution=key[1], retry_in=delay,
                    error=f"{type(exc).__name__}: {exc}"[:500])
        self.wake_at(key, self.clock() + timedelta(seconds=delay))

    async def _refresh(self, key: Key) -> None:
        try:
            body = await self.client.get(path_for(API_VERSION, EXECUTIONS, key[0], key[1]))
        except ApiError as exc:
            if exc.not_found:
                self._forget(key)
                return
            raise
        self.executions[key] = body

    async def _patch_status(self, key: Key, body: Mapping[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
        """A merge patch of status guarded by the resourceVersion we decided on."""
        rv = body["metadata"].get("resourceVersion")
        try:
            updated = await self.client.patch(
                path_for(API_VERSION, EXECUTIONS, key[0], key[1], "status"),
                {"metadata": {"resourceVersion": rv}, "status": patch},
            )
        except ApiError as exc:
            if exc.conflict or (exc.status == 422 and "resourceVersion" in exc.message):
                raise Conflict() from exc
            raise
        self.executions[key] = updated
        return updated

    def _event(self, body: Mapping[str, Any], etype: str, reason: str, message: str) -> None:
        """Post a Kubernetes Event about the Execution without waiting for it."""
        self._spawn(post_event(self.client, body, etype, reason, message, self.clock()))

    async def _reconcile_once(self, key: Key, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            return
        status: dict[str, Any] = body.get("status") or {}
        spec_raw: dict[str, Any] = body.get("spec") or {}
        class_name = str(spec_raw.get("executionClassName") or "default")
        self._track_phase(key, class_name, status.get("phase") or Phase.PENDING)
        if is_terminal(status):
            await self._after_terminal(key, body)
            return
        ctx = _Ctx(self, key, body)
        clipped = safejson.quarantined(body)
        if clipped:
            await self._invalid(ctx, f"{clipped.split('[', 1)[0]} is nested more than {MAX_INPUT_DEPTH} levels "
                                     "deep, too deep for the operator to read: create it again with flatter input")
            return
        try:
            spec = ExecutionSpec.model_validate(spec_raw)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            await self._invalid(ctx, f"spec.{where}: {first.get('msg')}")
            return
        cls_body = await self._class(spec.execution_class_name)
        if cls_body is None:
            await self._invalid(
                ctx,
                f'ExecutionClass "{spec.execution_class_name}" does not exist: create it or set '
                f"spec.executionClassName to one of: {', '.join(self.gates.class_names()) or '(none)'}",
            )
            return
        cls = ExecutionClassSpec.model_validate(cls_body.get("spec") or {})
        problem = validate_execution(spec, cls, class_name=spec.execution_class_name)
        if problem:
            await self._invalid(ctx, problem)
            return
        ctx.spec, ctx.cls = spec, cls
        attempt = int(status.get("attempt") or 0)
        phase = status.get("phase")
        if spec.cancel:
            await self._cancel(ctx, attempt)
            return
        if attempt == 0 or phase == Phase.RETRYING:
            next_at = parse_time(status.get("nextAttemptAt"))
            if phase == Phase.RETRYING and next_at and next_at > self.clock():
                self.wake_at(key, next_at)
                return
            await self._launch(ctx, attempt + 1 if phase == Phase.RETRYING else max(attempt, 1))
            return
        pod_key = (key[0], str(status.get("podName") or pod_name(ctx.ref, attempt)))
        pod = self.pods.get(pod_key)
        if pod is None and pod_key not in self.vanished:
            try:
                pod = slim_pod(await self.client.get(path_for("v1", "pods", *pod_key)))
                self.pods[pod_key] = pod
            except ApiError as exc:
                if not exc.not_found:
                    raise
        if pod is None or pod["metadata"].get("uid") is None:
            last = self.vanished.get(pod_key)
            verdict = classify_vanished_pod(last, cancel_requested=spec.cancel)
            await self._attempt_done(ctx, attempt, verdict, pod=None)
            return
        await self._observe_pod(ctx, attempt, pod)

    async def _class(self, name: str) -> dict[str, Any] | None:
        return await self.gates.get_class(name)

    # ----------------------------------------------------------------- steps

    async def _invalid(self, ctx: _Ctx, message: str) -> None:
        error = ErrorInfo.of(ErrorType.VALIDATION_ERROR, message)
        patch = st.invalid(ctx.status, error=error, now=ctx.now, generation=ctx.generation,
                           correlation_id=ctx.correlation_id)
        updated = await self._patch_status(ctx.key, ctx.body, patch)
        self._event(updated, EventType.WARNING, EventReason.INVALID, message)
        metrics.record_terminal(ctx.key[0], self.class_label(ctx.class_name), "failed", ErrorType.VALIDATION_ERROR,
                                0.0)
        self._track_phase(ctx.key, ctx.class_name, None)
        await self._after_terminal(ctx.key, updated)

    async def _launch(self, ctx: _Ctx, attempt: int) -> None:
        """Create the attempt's pod, or find the one an earlier try made (its status write lost).

        The create itself finds an existing pod (AlreadyExists); the breaker's refusal, which ends the
        attempt without creating, reads it first, so a pod that already runs the user's code is never
        left behind by a verdict about a launch that did not happen. A queue hold uses the cache.
        """
        spec, cls = ctx.require()
        namespace = ctx.key[0]
        if cls.max_concurrent and self._active_pods(ctx.class_name, ctx.key) >= cls.max_concurrent:
            # Holding decides nothing: the watch's cache is enough, as the pod's own events come back here.
            existing = self.pods.get((namespace, pod_name(ctx.ref, attempt)))
            if existing is not None:
                await self._launched(ctx, attempt, existing)
                return
            message = (f'Waiting for a slot: ExecutionClass "{ctx.class_name}" runs at most '
                       f"{cls.max_concurrent} at once")
            patch = st.held(ctx.status, reason=ConditionReason.QUEUED, message=message, now=ctx.now,
                            generation=ctx.generation, correlation_id=ctx.correlation_id)
            held_for = condition_reason(ctx.status, ConditionType.LAUNCHED)
            if _differs(ctx.status, patch, ("phase",)) or held_for != ConditionReason.QUEUED:
                await self._patch_status(ctx.key, ctx.body, patch)
            self.queued.setdefault(ctx.class_name, set()).add(ctx.key)
            return
        admission = await self.gates.admit(ctx.class_name, ctx.key, attempt)
        if not admission.allowed:
            existing = await self._attempt_pod(namespace, pod_name(ctx.ref, attempt))
            if existing is not None:
                await self._launched(ctx, attempt, existing)
                return
            error = ErrorInfo.of(ErrorType.SERVICE_UNAVAILABLE, admission.message,
                                 **{"retryAt": admission.retry_at, "executionClass": ctx.class_name})
            verdict = Verdict(success=False, error=error, exit_code=None, exit_code_source="unknown")
            await self._attempt_done(ctx, attempt, verdict, pod=None, not_before=parse_time(admission.retry_at))
            return
        self.queued.get(ctx.class_name, set()).discard(ctx.key)
        if attempt > 1:
            await self._stop_leftover_pod(namespace, pod_name(ctx.ref, attempt - 1))
            await self._stop_leftover_pod(namespace, ctx.status.get("podName"))
        if await self._launch_warm(ctx, attempt):
            return
        try:
            if not cls.allow_network:
                await self._ensure_network_policy(namespace)
            if uses_configmap_carrier(spec):
                try:
                    carrier = build_carrier(ctx.ref, spec, ctx.class_name)
                except PayloadTooLarge as exc:
                    await self._invalid(ctx, str(exc))
                    return
                await _create_or_get(self.client, path_for("v1", "configmaps", namespace), carrier)
            manifest = build_pod(ctx.ref, spec, cls, attempt)
            pod = await _create_or_get(self.client, path_for("v1", "pods", namespace), manifest)
        except ApiError as exc:
            # A refusal ends the attempt; anything else (throttling, a server error the client's own
            # retries did not outlast) is an API error: the reconcile is retried, the attempt goes on.
            if exc.status in (400, 403, 422):
                error = classify_create_error(exc.status, exc.body)
                verdict = Verdict(success=False, error=error, exit_code=None, exit_code_source="unknown")
                await self._attempt_done(ctx, attempt, verdict, pod=None)
                return
            raise
        await self._launched(ctx, attempt, pod)

    async def _attempt_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The attempt's pod if it exists: from the watch's cache, else one read."""
        pod = self.pods.get((namespace, name))
        if pod is not None:
            return pod
        try:
            return await self.client.get(path_for("v1", "pods", namespace, name))
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    async def _launched(self, ctx: _Ctx, attempt: int, pod: dict[str, Any]) -> None:
        _, cls = ctx.require()
        namespace = ctx.key[0]
        pod_key = (namespace, pod["metadata"]["name"])
        if pod_key not in self.pods or resource_version(pod) >= resource_version(self.pods[pod_key]):
            self.pods[pod_key] = slim_pod(pod)
        self.vanished.pop(pod_key, None)
        patch = st.launched(ctx.status, attempt=attempt, pod=pod_key[1], now=ctx.now, generation=ctx.generation,
                            correlation_id=ctx.correlation_id, launch=Launch.COLD)
        updated = await self._patch_status(ctx.key, ctx.body, patch)
        self._track_phase(ctx.key, ctx.class_name, Phase.PENDING)
        self._event(updated, EventType.NORMAL, EventReason.LAUNCHED, f"Created pod {pod_key[1]} for attempt {attempt}")
        log.info("launched", namespace=namespace, execution=ctx.key[1], attempt=attempt, pod=pod_key[1],
                 correlation_id=ctx.correlation_id)
        created = parse_time(pod["metadata"].get("creationTimestamp")) or self.clock()
        self.wake_at(ctx.key, created + timedelta(seconds=cls.pending_timeout_seconds + 0.5))
        # The pod may have finished already (a launch repeated after a restart): look again at once.
        if pod_finished(pod) or container_started_at(pod):
            self._spawn(self.reconcile(ctx.key))

    async def _launch_warm(self, ctx: _Ctx, attempt: int) -> bool:
        """Run the attempt in a warm pool's pod: the one claimed before a restart, or a new claim.

        The pod is handed the payload. False means launch cold now (no pool, none ready, a cold pod
        already made for the attempt, or the handover failed: that pod is deleted, never reused).
        """
        spec, cls = ctx.require()
        namespace = ctx.key[0]
        earlier = await self._attempt_pods(ctx, attempt)
        if any(not claimed_for(p, ctx.ref.uid, attempt) for p in earlier):
            return False  # a cold pod was made for this attempt before a restart: the cold path adopts it
        pod = earlier[0] if earlier else None
        if pod is not None:
            # Claimed by an earlier pass that did not record it: handed over already (its log says so), or
            # hand it over now; failing both, delete it. Never two pods, never two payloads.
            if not (pod_finished(pod) or await self._payload_arrived(pod)):
                handed = await self.pools.hand_over(pod, ctx.ref, spec, attempt, ctx.class_name)
                if not handed and not await self._payload_arrived(pod):
                    await self.pools.delete(pod)
                    return False
        else:
            if not self.pools.has_pool(namespace, ctx.class_name):
                return False
            pod = await self.pools.claim(ctx.ref, spec, cls, ctx.class_name, attempt)
            if pod is None:
                return False
            self._remember_pod(pod)
            if not await self.pools.hand_over(pod, ctx.ref, spec, attempt, ctx.class_name):
                await self.pools.delete(pod)
                return False
        self._remember_pod(pod)
        name = pod["metadata"]["name"]
        patch = st.warm_started(ctx.status, attempt=attempt, pod=name, now=ctx.now, generation=ctx.generation,
                                correlation_id=ctx.correlation_id)
        updated = await self._patch_status(ctx.key, ctx.body, patch)
        self._track_phase(ctx.key, ctx.class_name, "Running")
        pool = (pod["metadata"].get("labels") or {}).get(LABEL_CLAIMED_FROM)
        self._event(updated, "Normal", "Launched", f"Claimed warm pod {name} from pool {pool} for attempt {attempt}")
        log.info("launched warm", namespace=namespace, execution=ctx.key[1], attempt=attempt, pod=name,
                 correlation_id=ctx.correlation_id)
        await self._user_code_started(ctx, attempt, rfc3339(self.clock()), launch=Launch.WARM)
        if pod_finished(pod):
            self._spawn(self.reconcile(ctx.key))
        return True

    def _remember_pod(self, pod: Mapping[str, Any]) -> None:
        pod_key = (pod["metadata"].get("namespace", ""), pod["metadata"]["name"])
        if pod_key not in self.pods or resource_version(pod) >= resource_version(self.pods[pod_key]):
            self.pods[pod_key] = slim_pod(pod)
        self.vanished.pop(pod_key, None)

    async def _attempt_pods(self, ctx: _Ctx, attempt: int) -> list[dict[str, Any]]:
        """Pods an earlier pass (or the process before a restart) made or claimed for this attempt."""
        uid = ctx.ref.uid

        def ours(pod: Mapping[str, Any]) -> bool:
            meta = pod.get("metadata") or {}
            owned = any(r.get("uid") == uid and r.get("controller") for r in meta.get("ownerReferences") or [])
            return owned and (meta.get("labels") or {}).get(LABEL_ATTEMPT) == str(attempt) and \
                not meta.get("deletionTimestamp")

        found = [pod for pod in self.pods.values() if ours(pod)]
        created = parse_time(ctx.body["metadata"].get("creationTimestamp"))
        # Timestamps are whole seconds and clocks differ a little: only what was surely created after this
        # process started has everything made for it in the cache.
        if found or (created is not None and created >= self.started_at + timedelta(seconds=CLOCK_MARGIN_SECONDS)):
            return found
        # Older than this process: the pod watch may not have listed everything yet; ask the server.
        selector = f"{LABEL_EXECUTION}={label_value(ctx.key[1])},{LABEL_ATTEMPT}={attempt}"
        listed = await self.client.get(path_for("v1", "pods", ctx.key[0]), {"labelSelector": selector})
        return [dict(pod) for pod in listed.get("items") or [] if ours(pod)]

    async def _payload_arrived(self, pod: Mapping[str, Any]) -> bool:
        if str(pod["metadata"].get("uid")) in self.pools.handed:
            return True
        text = await self._log_tail(pod["metadata"].get("namespace", ""), pod["metadata"]["name"], lines=100000)
        return handed_over(text)

    async def _observe_pod(self, ctx: _Ctx, attempt: int, pod: dict[str, Any]) -> None:
        spec, cls = ctx.require()
        if pod_finished(pod):
            # The report takes `reportLines` lines at the end of the log; other lines (a lagging
            # stream) may sit between them, so read a margin more, and much more if pieces are missing.
            lines = (report_lines_expected(pod) or 0) + LOG_TAIL_LINES
            unreadable: ApiError | None = None
            try:
                log_tail: str | None = await self._log_tail(ctx.key[0], pod["metadata"]["name"], lines)
                if log_tail is not None and not log_holds_full_report(log_tail):
                    wide = max(LOG_TAIL_LINES_WIDE, 4 * lines)
                    log_tail = await self._log_tail(ctx.key[0], pod["metadata"]["name"], wide) or log_tail
            except ApiError as exc:
                if not exc.not_found and self.error_counts.get(ctx.key, 0) + 1 < LOG_READ_ROUNDS:
                    raise  # read again after a backoff: the outcome waits for the complete evidence
                log_tail, unreadable = None, exc
            verdict = classify_finished_pod(pod, log_tail, cancel_requested=spec.cancel, attempt=attempt)
            if unreadable is not None and verdict.success:
                verdict = _unconfirmed_success(verdict, unreadable, pod["metadata"]["name"], attempt)
            if verdict.user_code_started_at and ctx.status.get("phase") != Phase.RUNNING:
                await self._user_code_started(ctx, attempt, verdict.user_code_started_at)
            await self._attempt_done(ctx, attempt, verdict, pod=pod)
            return
        started = container_started_at(pod)
        if started:
            if ctx.status.get("phase") != Phase.RUNNING:
                patch = st.running(ctx.status, attempt=attempt, started_at=started, now=ctx.now,
                                   generation=ctx.generation, correlation_id=ctx.correlation_id)
                await self._patch_status(ctx.key, ctx.body, patch)
                self._track_phase(ctx.key, ctx.class_name, Phase.RUNNING)
                await self._user_code_started(ctx, attempt, started)
            return
        created = parse_time(pod["metadata"].get("creationTimestamp")) or self.clock()
        pending_for = (self.clock() - created).total_seconds()
        error = classify_stuck_pod(pod, pending_seconds=pending_for, pending_timeout=cls.pending_timeout_seconds)
        if error is not None:
            verdict = Verdict(success=False, error=error, exit_code=None, exit_code_source="unknown")
            await self._attempt_done(ctx, attempt, verdict, pod=pod, delete_pod=True)
            return
        self.wake_at(ctx.key, created + timedelta(seconds=cls.pending_timeout_seconds + 0.5))

    async def _user_code_started(self, ctx: _Ctx, attempt: int, started_at: str, launch: str = "cold") -> None:
        created = parse_time(ctx.body["metadata"].get("creationTimestamp"))
        started = parse_time(started_at)
        if created and started:
            metrics.record_launch_latency(self.class_label(ctx.class_name),
                                          max(0.0, (started - created).total_seconds()), launch)
        await self.gates.record(ctx.class_name, ctx.key, attempt, reached_user_code=True)

    async def _attempt_done(
        self,
        ctx: _Ctx,
        attempt: int,
        verdict: Verdict,
        *,
        pod: dict[str, Any] | None,
        delete_pod: bool = False,
        not_before: datetime | None = None,
    ) -> None:
        """Carry out what follows the attempt's verdict: a retry, or the end (then `pod` goes if asked).

        `not_before` is the earliest next attempt of a launch the breaker refused (its retryAt).
        """
        spec, _ = ctx.require()
        if not verdict.user_code_started_at:
            # A launch that never reached the user's code: a breaker failure if its type says so.
            await self.gates.record(ctx.class_name, ctx.key, attempt, reached_user_code=False, error=verdict.error)
        plan = plan_after_attempt(verdict, spec.retry, attempt=attempt,
                                  disruptions=int(ctx.status.get("disruptions") or 0), now=self.clock(),
                                  rng=self.rng, not_before=not_before)
        if isinstance(plan, RetryPlan):
            await self._retry(ctx, attempt, verdict, plan)
        else:
            await self._end(ctx, attempt, verdict, plan)
        if delete_pod and pod is not None:
            await self._delete_pod(ctx.key[0], pod["metadata"]["name"])

    async def _retry(self, ctx: _Ctx, attempt: int, verdict: Verdict, plan: RetryPlan) -> None:
        """Write Retrying with nextAttemptAt, count the retry, say so, and wake then."""
        error = verdict.error
        assert error is not None
        next_at = rfc3339(plan.next_attempt_at)
        patch = st.retrying(ctx.status, verdict=verdict, attempt=attempt, next_attempt_at=next_at,
                            now=ctx.now, generation=ctx.generation, correlation_id=ctx.correlation_id,
                            disruptions=plan.disruptions)
        updated = await self._patch_status(ctx.key, ctx.body, patch)
        self._track_phase(ctx.key, ctx.class_name, Phase.RETRYING)
        metrics.record_retry(self.class_label(ctx.class_name), error.type)
        self._event(updated, *retry_event(attempt, error, plan.next_attempt_at))
        log.info("retrying", namespace=ctx.key[0], execution=ctx.key[1], attempt=attempt,
                 correlation_id=ctx.correlation_id, error_type=str(error.type), next_attempt_at=next_at)
        self.wake_at(ctx.key, plan.next_attempt_at)

    async def _end(self, ctx: _Ctx, attempt: int, verdict: Verdict, plan: EndPlan) -> None:
        """Write the terminal status (naming the DeadLetter made first), count it, say so, then tidy up."""
        patch = st.finished(ctx.status, verdict=verdict, attempt=attempt, now=ctx.now,
                            generation=ctx.generation, correlation_id=ctx.correlation_id)
        dead_letter = await self._dead_letter_first(ctx, patch) if plan.dead_letter else None
        if dead_letter:
            patch["deadLetterName"] = dead_letter
        updated = await self._patch_status(ctx.key, ctx.body, patch)
        self._count_end(ctx, verdict, plan, updated)
        self._event(updated, *end_event(verdict, plan, attempt, dead_letter))
        error = verdict.error
        log.info("finished", namespace=ctx.key[0], execution=ctx.key[1], attempt=attempt,
                 correlation_id=ctx.correlation_id, phase=patch["phase"],
                 error_type=str(error.type) if error else None)
        await self._after_terminal(ctx.key, updated)

    async def _dead_letter_first(self, ctx: _Ctx, patch: Mapping[str, Any]) -> str | None:
        """The DeadLetter of the Execution as the terminal `patch` leaves it, before that write.

        So its name goes into the same (terminal) status write; after a crash in between, the same
        decision finds it again (its name comes from the uid).
        """
        ended = dict(ctx.body, status={**ctx.status, **{k: v for k, v in patch.items() if v is not None}})
        return await self._record_dead_letter(ended)

    def _count_end(self, ctx: _Ctx, verdict: Verdict, plan: EndPlan, updated: Mapping[str, Any]) -> None:
        """The terminal metrics, and the Execution leaves the in-flight gauge."""
        error = verdict.error
        metrics.record_terminal(ctx.key[0], self.class_label(ctx.class_name), plan.outcome,
                                error.type if error else None, duration_seconds(updated))
        self._track_phase(ctx.key, ctx.class_name, None)

    async def _cancel(self, ctx: _Ctx, attempt: int) -> None:
        stdout = stderr = ""
        pod_key = (ctx.key[0], str(ctx.status.get("podName") or ""))
        pod = self.pods.get(pod_key) if pod_key[1] else None
        if pod is not None and not pod_finished(pod):
            tail = None
            with contextlib.suppress(ApiError):  # the streams so far are a courtesy; the cancel is not
                tail = await self._log_tail(pod_key[0], pod_key[1], lines=200)
            if tail:
                stdout = "\n".join(line for line in tail.splitlines()
                                    if not line.startswith(("SANDBOX-REPORT ", PAYLOAD_MARKER)))
                stdout = stdout[-16384:]
        verdict = Verdict(
            success=False,
            error=ErrorInfo.of(ErrorType.CANCELLED, "Cancelled by spec.cancel",
                               podName=pod_key[1] or None, attempt=attempt or None),
            exit_code=None,
            exit_code_source="unknown",
            stdout=stdout,
            stderr=stderr,
        )
        await self._attempt_done(ctx, max(attempt, 1), verdict, pod=pod, delete_pod=pod is not None)

    async def _after_terminal(self, key: Key, body: Mapping[str, Any]) -> None:
        """Work that follows the end: the DeadLetter, TTL deletion, then drop the cached body."""
        status = body.get("status") or {}
        spec = body.get("spec") or {}
        timer = self.timers.pop(key, None)
        if timer:
            timer.handle.cancel()  # a pending-timeout or retry wake-up has nothing left to do
        await self._stop_leftover_pod(key[0], status.get("podName"))
        for record in status.get("attempts") or []:
            if record.get("podName"):
                self.pods.pop((key[0], str(record["podName"])), None)
                self.vanished.pop((key[0], str(record["podName"])), None)
        if status.get("phase") == Phase.FAILED and not status.get("deadLetterName") and self.dead_letters:
            # Only for Executions that ended before DeadLetters were recorded with the terminal write.
            name = await self._record_dead_letter(body)
            if name:
                body = await self._patch_status(key, body, {"deadLetterName": name})
                self._event(body, EventType.WARNING, EventReason.DEAD_LETTERED, f"Copied to DeadLetter {name}")
                status = body.get("status") or {}
        ttl = spec.get("ttlSecondsAfterFinished")
        finished_at = parse_time(status.get("completionTime"))
        if ttl is not None and finished_at is not None:
            due = finished_at + timedelta(seconds=int(ttl))
            if due <= self.clock():
                with contextlib.suppress(ApiError):
                    await self.client.delete(
                        path_for(API_VERSION, EXECUTIONS, key[0], key[1]),
                        {"propagationPolicy": "Background",
                         "preconditions": {"uid": body["metadata"].get("uid")}},
                    )
                self._forget(key)
                return
            self.wake_at(key, due)
        self.executions.pop(key, None)
        self.finished[key] = (str(body["metadata"].get("uid")), resource_version(body))
        self._track_phase(key, None, None)

    # ----------------------------------------------------------------- helpers

    async def _log_tail(self, namespace: str, pod: str, lines: int = LOG_TAIL_LINES) -> str:
        return await self.client.get_text(
            path_for("v1", "pods", namespace, pod, "log"), {"container": "sandbox", "tailLines": str(lines)}
        )

    async def _record_dead_letter(self, body: Mapping[str, Any]) -> str | None:
        """Copy a failed Execution into its DeadLetter when its class's policy wants one."""
        if self.dead_letters is None:
            return None
        policy = DeadLetterPolicy.ALL
        cls_body = self.gates.cached_class(str((body.get("spec") or {}).get("executionClassName") or "default"))
        if cls_body is not None:
            with contextlib.suppress(pydantic.ValidationError):
                policy = ExecutionClassSpec.model_validate(cls_body.get("spec") or {}).dead_letter
        if safejson.quarantined(body):
            return None  # a clipped copy would lose the input; the Execution itself keeps it whole
        class_name = str((body.get("spec") or {}).get("executionClassName") or "default")
        return await self.dead_letters.record(body, policy, class_label=self.class_label(class_name))

    async def _stop_leftover_pod(self, namespace: str, name: str | None) -> None:
        """Delete a pod that should no longer run (cancelled, timed out pending, superseded by a new attempt).

        It is left over when a crash came between the status write and the pod's deletion.
        """
        if not name:
            return
        pod = self.pods.get((namespace, name))
        if pod is not None and not pod_finished(pod) and not pod["metadata"].get("deletionTimestamp"):
            await self._delete_pod(namespace, name)

    async def _delete_pod(self, namespace: str, name: str) -> None:
        with contextlib.suppress(ApiError):
            await self.client.delete(path_for("v1", "pods", namespace, name), {"gracePeriodSeconds": 1})

    async def _ensure_network_policy(self, namespace: str) -> None:
        """Once per namespace: launches arriving together in a new namespace wait for the one creation."""
        if namespace in self.network_policies:
            return
        async with self.network_policy_locks.setdefault(namespace, asyncio.Lock()):
            if namespace in self.network_policies:
                return
            policy = deny_all_network_policy(namespace)
            await _create_or_get(self.client, path_for("networking.k8s.io/v1", "networkpolicies", namespace), policy)
            self.network_policies.add(namespace)
        self.network_policy_locks.pop(namespace, None)

    def _active_pods(self, class_name: str, key: Key) -> int:
        """Unfinished sandbox pods of a class, other than those of `key` (from the pod watch)."""
        label = label_value(class_name)
        count = 0
        for (namespace, _), pod in self.pods.items():
            meta = pod.get("metadata", {})
            if (meta.get("labels") or {}).get(LABEL_EXECUTION_CLASS) != label:
                continue
            if (namespace, execution_owner(pod)) == key or pod_finished(pod):
                continue
            count += 1
        return count

    def _release_queue_slot(self, class_name: str) -> None:
        waiting = self.queued.get(class_name)
        if not waiting:
            return
        for key in sorted(waiting):
            self._spawn(self.reconcile(key))


class _Ctx:
    """What one reconcile pass knows about its Execution."""

    def __init__(self, controller: Controller, key: Key, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        self.key = key
        self.body = body
        self.status: dict[str, Any] = body.get("status") or {}
        self.generation: int | None = meta.get("generation")
        self.correlation_id = correlation_id(body)
        self.class_name = str((body.get("spec") or {}).get("executionClassName") or "default")
        self.now = rfc3339(controller.clock())
        self.ref = ExecutionRef(namespace=key[0], name=key[1], uid=str(meta.get("uid", "")),
                                correlation_id=self.correlation_id)
        self.spec: ExecutionSpec | None = None
        self.cls: ExecutionClassSpec | None = None

    def require(self) -> tuple[ExecutionSpec, ExecutionClassSpec]:
        assert self.spec is not None
        assert self.cls is not None
        return self.spec, self.cls


def _differs(status: Mapping[str, Any], patch: Mapping[str, Any], fields: tuple[str, ...]) -> bool:
    return any(status.get(f) != patch.get(f) for f in fields)


def _unconfirmed_success(verdict: Verdict, exc: ApiError, pod: str, attempt: int) -> Verdict:
    """A success whose log stayed unreadable: its output is unknown, so it is not recorded as one."""
    error = ErrorInfo.of(
        ErrorType.INTERNAL_ERROR,
        f"The code finished with exit code 0 but its pod's log could not be read (HTTP {exc.status}), so its "
        "output is unknown",
        exc.message, podName=pod, attempt=attempt, httpStatus=exc.status,
    )
    return dataclasses.replace(verdict, success=False, error=error, output=None)


async def _create_or_get(client: KubeClient, collection: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """Create; if it already exists (a repeated step), return the existing object instead."""
    try:
        return await client.post(collection, manifest)
    except ApiError as exc:
        if exc.already_exists:
            return await client.get(f"{collection}/{manifest['metadata']['name']}")
        raise
