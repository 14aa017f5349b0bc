"""The Execution controller: a level-triggered reconcile loop over (Execution, its current pod, now).

kopf delivers raw watch events (no kopf writes per object); every event, pod event or timer runs
`reconcile(key)` under a per-Execution lock, which looks at the freshest known Execution body and pod
and takes the next step. Status writes are merge patches guarded by `metadata.resourceVersion`, so an
older view never overwrites a newer one; a conflict re-reads and re-decides. Names are deterministic
per attempt, so a step repeated after a crash finds what the first try made.

The steps themselves live beside it: launching an attempt in `launch`, what becomes of it in
`attempt_outcomes` (the pure decision in `attempt_plan`), and the caches, timers and shared writes in
`reconcile_state`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import pydantic
import structlog

from execution_operator import metrics, safejson
from execution_operator.api import API_VERSION, EXECUTIONS, LABEL_EXECUTION_CLASS, Kind, Phase
from execution_operator.attempt_outcomes import Outcomes
from execution_operator.bodies import Key, class_name_of, execution_owner, key_of, slim_pod
from execution_operator.bounds import MAX_INPUT_DEPTH
from execution_operator.classify import classify_vanished_pod, pod_finished
from execution_operator.deadletters import DeadLetters
from execution_operator.gates import Gates
from execution_operator.k8s import ApiError, KubeClient, path_for, resource_version
from execution_operator.launch import Launcher, NetworkPolicies
from execution_operator.models import ExecutionClassSpec, ExecutionSpec
from execution_operator.pools import WarmPools
from execution_operator.reconcile_state import Conflict, ReconcilePass, ReconcileState, now_utc
from execution_operator.sandbox import pod_name
from execution_operator.status import is_terminal, parse_time
from execution_operator.validation import validate_execution

log = structlog.get_logger("execution_operator.controller")

RECONCILE_ERROR_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class Controller:
    """The entry points (watch events, timers) and the reconcile loop, over one `ReconcileState`."""

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
        self.dead_letters = dead_letters
        self.state = ReconcileState(client, wake=self._wake, clock=clock, gates=gates)
        self.gates = self.state.gates
        self.locks: dict[Key, asyncio.Lock] = {}
        self.network_policies = NetworkPolicies(client)
        self.pools = WarmPools(client, self.gates, classes=self.gates.classes, clock=clock,
                               ensure_network_policy=self.network_policies.ensure)
        self.outcomes = Outcomes(self.state, dead_letters=dead_letters, rng=rng or random.Random())
        self.launcher = Launcher(self.state, pools=self.pools, network_policies=self.network_policies,
                                 outcomes=self.outcomes, reconcile=self.reconcile)

    # ----------------------------------------------------------------- watch events

    async def on_execution_event(self, body: Mapping[str, Any], event_type: str | None) -> None:
        """Cache the Execution from a watch event and reconcile it; a deletion forgets it."""
        key = key_of(body)
        if event_type == "DELETED":
            self.state.forget(key)
            return
        self.state.remember(key, body)
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
        state = self.state
        # Pods of finished Executions are not kept: the cache holds only what a decision may need.
        keep = owner is not None and key not in state.finished
        if event_type == "DELETED":
            state.pods.pop(pkey, None)
            if keep:
                state.vanished[pkey] = slim_pod(body)
        elif keep:
            current = state.pods.get(pkey)
            if current is None or resource_version(body) >= resource_version(current):
                state.pods[pkey] = slim_pod(body)
        if owner is None:
            return
        if key in state.executions:
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

    async def _wake(self, key: Key) -> None:
        """A timer's wake-up; a failed read schedules another one (a lost timer would never fire)."""
        if key not in self.state.executions:
            try:
                body = await self.client.get(path_for(API_VERSION, EXECUTIONS, key[0], key[1]))
            except ApiError as exc:
                if not exc.not_found:
                    self._reconcile_failed(key, exc)
                return
            except Exception as exc:  # noqa: BLE001 - one object's failure is logged, counted and retried
                self._reconcile_failed(key, exc)
                return
            self.state.remember(key, body)
        await self.reconcile(key)

    def _release_queue_slot(self, class_name: str) -> None:
        waiting = self.state.queued.get(class_name)
        if not waiting:
            return
        for key in sorted(waiting):
            self.state.spawn(self.reconcile(key))

    # ----------------------------------------------------------------- reconcile

    async def reconcile(self, key: Key) -> None:
        """Reconcile one Execution from the caches, one at a time per Execution; a conflict re-reads and retries."""
        lock = self.locks.setdefault(key, asyncio.Lock())
        async with lock:
            try:
                for _ in range(8):
                    body = self.state.executions.get(key)
                    if body is None:
                        return
                    try:
                        await self._reconcile_once(key, body)
                        break
                    except Conflict:
                        await self._refresh(key)
                self.state.error_counts.pop(key, None)
            except ApiError as exc:
                if exc.not_found and key not in self.state.executions:
                    return
                self._reconcile_failed(key, exc)
            except Exception as exc:  # noqa: BLE001 - one object's failure is logged, counted and retried
                self._reconcile_failed(key, exc)
            finally:
                if key not in self.state.executions and not lock.locked():
                    self.locks.pop(key, None)

    def _reconcile_failed(self, key: Key, exc: BaseException) -> None:
        count = self.state.error_counts.get(key, 0)
        self.state.error_counts[key] = count + 1
        delay = RECONCILE_ERROR_BACKOFF[min(count, len(RECONCILE_ERROR_BACKOFF) - 1)]
        if isinstance(exc, ApiError) and exc.retry_after:
            delay = max(delay, min(exc.retry_after, RECONCILE_ERROR_BACKOFF[-1]))
        metrics.record_reconcile_error(Kind.EXECUTION)
        log.warning("reconcile failed; will retry", namespace=key[0], execution=key[1], retry_in=delay,
                    error=f"{type(exc).__name__}: {exc}"[:500])
        self.state.wake_at(key, self.clock() + timedelta(seconds=delay))

    async def _refresh(self, key: Key) -> None:
        try:
            body = await self.client.get(path_for(API_VERSION, EXECUTIONS, key[0], key[1]))
        except ApiError as exc:
            if exc.not_found:
                self.state.forget(key)
                return
            raise
        self.state.executions[key] = body

    async def _reconcile_once(self, key: Key, body: dict[str, Any]) -> None:
        """The next step of one Execution: after its end, validation, cancel, a launch, or its attempt."""
        if body["metadata"].get("deletionTimestamp"):
            return
        status: dict[str, Any] = body.get("status") or {}
        self.state.track_phase(key, class_name_of(body), status.get("phase") or Phase.PENDING)
        if is_terminal(status):
            await self.outcomes.after_terminal(key, body)
            return
        ctx = ReconcilePass(key, body, self.clock())
        if not await self._validated(ctx):
            return
        spec, _ = ctx.require()
        attempt = int(status.get("attempt") or 0)
        phase = status.get("phase")
        if spec.cancel:
            await self.outcomes.cancel(ctx, attempt)
            return
        if attempt == 0 or phase == Phase.RETRYING:
            next_at = parse_time(status.get("nextAttemptAt"))
            if phase == Phase.RETRYING and next_at and next_at > self.clock():
                self.state.wake_at(key, next_at)
                return
            await self.launcher.launch(ctx, attempt + 1 if phase == Phase.RETRYING else max(attempt, 1))
            return
        await self._follow_attempt(ctx, attempt)

    async def _validated(self, ctx: ReconcilePass) -> bool:
        """Set the pass's spec and class, or end the Execution invalid (False) with why."""
        clipped = safejson.quarantined(ctx.body)
        if clipped:
            await self.outcomes.invalid(ctx, f"{clipped.split('[', 1)[0]} is nested more than {MAX_INPUT_DEPTH} "
                                             "levels deep, too deep for the operator to read: create it again "
                                             "with flatter input")
            return False
        try:
            spec = ExecutionSpec.model_validate(ctx.body.get("spec") or {})
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            await self.outcomes.invalid(ctx, f"spec.{where}: {first.get('msg')}")
            return False
        cls_body = await self.gates.get_class(spec.execution_class_name)
        if cls_body is None:
            await self.outcomes.invalid(
                ctx,
                f'ExecutionClass "{spec.execution_class_name}" does not exist: create it or set '
                f"spec.executionClassName to one of: {', '.join(self.gates.class_names()) or '(none)'}",
            )
            return False
        cls = ExecutionClassSpec.model_validate(cls_body.get("spec") or {})
        problem = validate_execution(spec, cls, class_name=spec.execution_class_name)
        if problem:
            await self.outcomes.invalid(ctx, problem)
            return False
        ctx.spec, ctx.cls = spec, cls
        return True

    async def _follow_attempt(self, ctx: ReconcilePass, attempt: int) -> None:
        """The current attempt's pod, from the cache or one read; a pod that is gone ends the attempt."""
        spec, _ = ctx.require()
        pod_key = (ctx.key[0], str(ctx.status.get("podName") or pod_name(ctx.ref, attempt)))
        pod = self.state.pods.get(pod_key)
        if pod is None and pod_key not in self.state.vanished:
            try:
                pod = slim_pod(await self.client.get(path_for("v1", "pods", *pod_key)))
                self.state.pods[pod_key] = pod
            except ApiError as exc:
                if not exc.not_found:
                    raise
        if pod is None or pod["metadata"].get("uid") is None:
            verdict = classify_vanished_pod(self.state.vanished.get(pod_key), cancel_requested=spec.cancel)
            await self.outcomes.attempt_done(ctx, attempt, verdict, pod=None)
            return
        await self.outcomes.observe_pod(ctx, attempt, pod)
