"""What the controller's steps share: caches, wake-up timers and the writes every step makes.

The caches are fed by watch events; the shared writes are the guarded status patch, Events, the
in-flight gauge and pod deletions. One `ReconcileState` per operator, owned by `controller.Controller`;
the launch (`launch.Launcher`) and the attempt outcomes (`attempt_outcomes.Outcomes`) act on it. A
`ReconcilePass` is what one reconcile pass knows about its Execution.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from execution_operator import metrics
from execution_operator.api import API_VERSION, EXECUTIONS, TERMINAL_PHASES
from execution_operator.bodies import Key, class_name_of, correlation_id, slim_pod
from execution_operator.classify import pod_finished
from execution_operator.gates import Gates
from execution_operator.k8s import ApiError, KubeClient, path_for, post_event, resource_version
from execution_operator.models import ExecutionClassSpec, ExecutionSpec
from execution_operator.sandbox import ExecutionRef
from execution_operator.status import rfc3339

LOG_TAIL_LINES = 32


def now_utc() -> datetime:
    """The controller's default clock (aware UTC)."""
    return datetime.now(UTC)


class Conflict(Exception):
    """Our view of the Execution was stale: re-read and decide again."""


@dataclass
class _Timer:
    when: float
    handle: asyncio.TimerHandle


class ReconcileState:
    """The client, the caches, the timers and the background tasks, with the writes the steps share.

    `wake` is the controller's wake-up: what a timer runs when it fires.
    """

    def __init__(
        self,
        client: KubeClient,
        *,
        wake: Callable[[Key], Coroutine[Any, Any, None]],
        clock: Callable[[], datetime] = now_utc,
        gates: Gates | None = None,
    ) -> None:
        self.client = client
        self.clock = clock
        self.wake = wake
        self.gates = gates or Gates(client, clock=clock, post_event=self.event)
        self.executions: dict[Key, dict[str, Any]] = {}
        #: (uid, resourceVersion) of finished Executions, to ignore late echoes of earlier writes.
        self.finished: dict[Key, tuple[str, int]] = {}
        self.pods: dict[Key, dict[str, Any]] = {}
        self.vanished: dict[Key, dict[str, Any]] = {}
        self.timers: dict[Key, _Timer] = {}
        self.error_counts: dict[Key, int] = {}
        #: Executions held by their class's maxConcurrent, by class: a pod that ends wakes them.
        self.queued: dict[str, set[Key]] = {}
        self.phases: dict[Key, tuple[str, str]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    # ----------------------------------------------------------------- caches

    def remember(self, key: Key, body: Mapping[str, Any]) -> None:
        """Cache an Execution's body unless it is older than the one cached (or a late echo)."""
        done = self.finished.get(key)
        if done is not None and done[0] == body["metadata"].get("uid") and resource_version(body) < done[1]:
            return  # a late echo of a write made before the Execution finished
        current = self.executions.get(key)
        newer = current is None or resource_version(body) >= resource_version(current)
        if newer or current is None or current["metadata"].get("uid") != body["metadata"].get("uid"):
            self.executions[key] = dict(body)

    def forget(self, key: Key) -> None:
        """Drop everything kept about an Execution (it was deleted)."""
        self.executions.pop(key, None)
        self.finished.pop(key, None)
        self.error_counts.pop(key, None)
        self.cancel_timer(key)
        self.track_phase(key, None, None)
        for waiting in self.queued.values():
            waiting.discard(key)

    def remember_pod(self, namespace: str, pod: Mapping[str, Any]) -> None:
        """Cache an attempt's pod (slim) unless the cache has a newer view; it has not vanished."""
        pod_key = (namespace, pod["metadata"]["name"])
        if pod_key not in self.pods or resource_version(pod) >= resource_version(self.pods[pod_key]):
            self.pods[pod_key] = slim_pod(pod)
        self.vanished.pop(pod_key, None)

    # ----------------------------------------------------------------- the in-flight gauge

    def class_label(self, name: str) -> str:
        """A class as the metrics name it: only classes that exist, so tenants cannot grow the series."""
        return name if self.gates.cached_class(name) is not None else metrics.UNKNOWN

    def track_phase(self, key: Key, cls: str | None, phase: str | None) -> None:
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

    # ----------------------------------------------------------------- timers and tasks

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
            self.spawn(self.wake(key))

        self.timers[key] = _Timer(at, loop.call_at(at, fire))

    def cancel_timer(self, key: Key) -> None:
        """Drop the Execution's wake-up, if it has one."""
        timer = self.timers.pop(key, None)
        if timer:
            timer.handle.cancel()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` in the background, keeping a reference until it is done."""
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ----------------------------------------------------------------- writes

    async def patch_status(self, key: Key, body: Mapping[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
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

    def event(self, body: Mapping[str, Any], etype: str, reason: str, message: str) -> None:
        """Post a Kubernetes Event about the Execution without waiting for it."""
        self.spawn(post_event(self.client, body, etype, reason, message, self.clock()))

    # ----------------------------------------------------------------- pods

    async def log_tail(self, namespace: str, pod: str, lines: int = LOG_TAIL_LINES) -> str:
        """The last `lines` lines of the sandbox container's log."""
        return await self.client.get_text(
            path_for("v1", "pods", namespace, pod, "log"), {"container": "sandbox", "tailLines": str(lines)}
        )

    async def stop_leftover_pod(self, namespace: str, name: str | None) -> None:
        """Delete a pod that should no longer run (cancelled, timed out pending, superseded by a new attempt).

        It is left over when a crash came between the status write and the pod's deletion.
        """
        if not name:
            return
        pod = self.pods.get((namespace, name))
        if pod is not None and not pod_finished(pod) and not pod["metadata"].get("deletionTimestamp"):
            await self.delete_pod(namespace, name)

    async def delete_pod(self, namespace: str, name: str) -> None:
        """Delete a pod with a short grace period; one already gone (or any refusal) is no error."""
        with contextlib.suppress(ApiError):
            await self.client.delete(path_for("v1", "pods", namespace, name), {"gracePeriodSeconds": 1})


class ReconcilePass:
    """What one reconcile pass knows about its Execution."""

    def __init__(self, key: Key, body: dict[str, Any], now: datetime) -> None:
        meta = body["metadata"]
        self.key = key
        self.body = body
        self.status: dict[str, Any] = body.get("status") or {}
        self.generation: int | None = meta.get("generation")
        self.correlation_id = correlation_id(body)
        self.class_name = class_name_of(body)
        self.now = rfc3339(now)
        self.ref = ExecutionRef(namespace=key[0], name=key[1], uid=str(meta.get("uid", "")),
                                correlation_id=self.correlation_id)
        self.spec: ExecutionSpec | None = None
        self.cls: ExecutionClassSpec | None = None

    def require(self) -> tuple[ExecutionSpec, ExecutionClassSpec]:
        """The validated spec and class (set once the pass has validated them)."""
        assert self.spec is not None
        assert self.cls is not None
        return self.spec, self.cls
