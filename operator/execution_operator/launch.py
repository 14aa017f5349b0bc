"""Launching an attempt: the queue hold, the breaker's admission, a warm pool's pod or a cold pod.

`Launcher.launch` creates the attempt's pod (its carrier ConfigMap and the namespace's deny-all
NetworkPolicy first), or claims and hands over a warm pod, or finds what an earlier try made for the
attempt (its status write lost) and adopts it. A launch that ends the attempt without a pod (a refusal
of the breaker or of the API server) hands the verdict to `attempt_outcomes.Outcomes`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from datetime import timedelta
from typing import Any

import structlog

from execution_operator import status as st
from execution_operator.api import (
    LABEL_ATTEMPT,
    LABEL_CLAIMED_FROM,
    LABEL_EXECUTION,
    LABEL_EXECUTION_CLASS,
    ConditionReason,
    ConditionType,
    EventReason,
    EventType,
    Launch,
    Phase,
)
from execution_operator.attempt_outcomes import Outcomes
from execution_operator.bodies import Key, condition_reason, container_started_at, execution_owner
from execution_operator.classify import Verdict, classify_create_error, pod_finished
from execution_operator.errors import ErrorInfo, ErrorType
from execution_operator.k8s import ApiError, KubeClient, path_for
from execution_operator.pools import WarmPools
from execution_operator.reconcile_state import ReconcilePass, ReconcileState
from execution_operator.sandbox import (
    PayloadTooLarge,
    build_carrier,
    build_pod,
    deny_all_network_policy,
    label_value,
    pod_name,
    uses_configmap_carrier,
)
from execution_operator.status import parse_time, rfc3339
from execution_operator.warmpool import claimed_for, handed_over

#: The controller's log lines keep one logger, whichever module writes them.
log = structlog.get_logger("execution_operator.controller")

#: How far apart the API server's clock and ours may be when deciding what predates this process.
CLOCK_MARGIN_SECONDS = 2.0


class NetworkPolicies:
    """The deny-all NetworkPolicy of each namespace, created once (for cold launches and warm pools)."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client
        self.ready: set[str] = set()
        self.locks: dict[str, asyncio.Lock] = {}

    async def ensure(self, namespace: str) -> None:
        """Once per namespace: launches arriving together in a new namespace wait for the one creation."""
        if namespace in self.ready:
            return
        async with self.locks.setdefault(namespace, asyncio.Lock()):
            if namespace in self.ready:
                return
            policy = deny_all_network_policy(namespace)
            await create_or_get(self.client, path_for("networking.k8s.io/v1", "networkpolicies", namespace), policy)
            self.ready.add(namespace)
        self.locks.pop(namespace, None)


class Launcher:
    """Launches attempts; `reconcile` is the controller's, run again when a launched pod already moved on."""

    def __init__(
        self,
        state: ReconcileState,
        *,
        pools: WarmPools,
        network_policies: NetworkPolicies,
        outcomes: Outcomes,
        reconcile: Callable[[Key], Coroutine[Any, Any, None]],
    ) -> None:
        self.state = state
        self.client = state.client
        self.pools = pools
        self.network_policies = network_policies
        self.outcomes = outcomes
        self.reconcile = reconcile
        #: Executions created before this process started may have warm pods claimed by its predecessor.
        self.started_at = state.clock()

    async def launch(self, ctx: ReconcilePass, attempt: int) -> None:
        """Create the attempt's pod, or find the one an earlier try made (its status write lost).

        The create itself finds an existing pod (AlreadyExists); the breaker's refusal, which ends the
        attempt without creating, reads it first, so a pod that already runs the user's code is never
        left behind by a verdict about a launch that did not happen. A queue hold uses the cache.
        """
        _, cls = ctx.require()
        namespace = ctx.key[0]
        if cls.max_concurrent and self._active_pods(ctx.class_name, ctx.key) >= cls.max_concurrent:
            await self._hold(ctx, attempt, cls.max_concurrent)
            return
        admission = await self.state.gates.admit(ctx.class_name, ctx.key, attempt)
        if not admission.allowed:
            existing = await self._attempt_pod(namespace, pod_name(ctx.ref, attempt))
            if existing is not None:
                await self._launched(ctx, attempt, existing)
                return
            error = ErrorInfo.of(ErrorType.SERVICE_UNAVAILABLE, admission.message,
                                 **{"retryAt": admission.retry_at, "executionClass": ctx.class_name})
            verdict = Verdict(success=False, error=error, exit_code=None, exit_code_source="unknown")
            await self.outcomes.attempt_done(ctx, attempt, verdict, pod=None, not_before=parse_time(admission.retry_at))
            return
        self.state.queued.get(ctx.class_name, set()).discard(ctx.key)
        if attempt > 1:
            await self.state.stop_leftover_pod(namespace, pod_name(ctx.ref, attempt - 1))
            await self.state.stop_leftover_pod(namespace, ctx.status.get("podName"))
        if await self._launch_warm(ctx, attempt):
            return
        await self._launch_cold(ctx, attempt)

    async def _hold(self, ctx: ReconcilePass, attempt: int, max_concurrent: int) -> None:
        """Wait for a slot of the class's maxConcurrent, unless the attempt's pod exists already.

        Holding decides nothing: the watch's cache is enough, as the pod's own events come back here.
        """
        existing = self.state.pods.get((ctx.key[0], pod_name(ctx.ref, attempt)))
        if existing is not None:
            await self._launched(ctx, attempt, existing)
            return
        message = (f'Waiting for a slot: ExecutionClass "{ctx.class_name}" runs at most '
                   f"{max_concurrent} at once")
        patch = st.held(ctx.status, reason=ConditionReason.QUEUED, message=message, now=ctx.now,
                        generation=ctx.generation, correlation_id=ctx.correlation_id)
        held_for = condition_reason(ctx.status, ConditionType.LAUNCHED)
        if _differs(ctx.status, patch, ("phase",)) or held_for != ConditionReason.QUEUED:
            await self.state.patch_status(ctx.key, ctx.body, patch)
        self.state.queued.setdefault(ctx.class_name, set()).add(ctx.key)

    async def _launch_cold(self, ctx: ReconcilePass, attempt: int) -> None:
        """Create the attempt's pod (and what it needs first); a refusal of the pod ends the attempt."""
        spec, cls = ctx.require()
        namespace = ctx.key[0]
        try:
            if not cls.allow_network:
                await self.network_policies.ensure(namespace)
            if uses_configmap_carrier(spec):
                try:
                    carrier = build_carrier(ctx.ref, spec, ctx.class_name)
                except PayloadTooLarge as exc:
                    await self.outcomes.invalid(ctx, str(exc))
                    return
                await create_or_get(self.client, path_for("v1", "configmaps", namespace), carrier)
            manifest = build_pod(ctx.ref, spec, cls, attempt)
            pod = await create_or_get(self.client, path_for("v1", "pods", namespace), manifest)
        except ApiError as exc:
            # A refusal ends the attempt; anything else (throttling, a server error the client's own
            # retries did not outlast) is an API error: the reconcile is retried, the attempt goes on.
            if exc.status in (400, 403, 422):
                error = classify_create_error(exc.status, exc.body)
                verdict = Verdict(success=False, error=error, exit_code=None, exit_code_source="unknown")
                await self.outcomes.attempt_done(ctx, attempt, verdict, pod=None)
                return
            raise
        await self._launched(ctx, attempt, pod)

    async def _attempt_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The attempt's pod if it exists: from the watch's cache, else one read."""
        pod = self.state.pods.get((namespace, name))
        if pod is not None:
            return pod
        try:
            return await self.client.get(path_for("v1", "pods", namespace, name))
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    async def _launched(self, ctx: ReconcilePass, attempt: int, pod: dict[str, Any]) -> None:
        """Record the attempt's (cold) pod in status, and wake for its pending timeout."""
        _, cls = ctx.require()
        namespace = ctx.key[0]
        name = pod["metadata"]["name"]
        self.state.remember_pod(namespace, pod)
        patch = st.launched(ctx.status, attempt=attempt, pod=name, now=ctx.now, generation=ctx.generation,
                            correlation_id=ctx.correlation_id, launch=Launch.COLD)
        updated = await self.state.patch_status(ctx.key, ctx.body, patch)
        self.state.track_phase(ctx.key, ctx.class_name, Phase.PENDING)
        self.state.event(updated, EventType.NORMAL, EventReason.LAUNCHED, f"Created pod {name} for attempt {attempt}")
        log.info("launched", namespace=namespace, execution=ctx.key[1], attempt=attempt, pod=name,
                 correlation_id=ctx.correlation_id)
        created = parse_time(pod["metadata"].get("creationTimestamp")) or self.state.clock()
        self.state.wake_at(ctx.key, created + timedelta(seconds=cls.pending_timeout_seconds + 0.5))
        # The pod may have finished already (a launch repeated after a restart): look again at once.
        if pod_finished(pod) or container_started_at(pod):
            self.state.spawn(self.reconcile(ctx.key))

    async def _launch_warm(self, ctx: ReconcilePass, attempt: int) -> bool:
        """Run the attempt in a warm pool's pod: the one claimed before a restart, or a new claim.

        The pod is handed the payload. False means launch cold now (no pool, none ready, a cold pod
        already made for the attempt, or the handover failed: that pod is deleted, never reused).
        """
        earlier = await self._attempt_pods(ctx, attempt)
        if any(not claimed_for(p, ctx.ref.uid, attempt) for p in earlier):
            return False  # a cold pod was made for this attempt before a restart: the cold path adopts it
        pod = await (self._hand_over_claimed(ctx, attempt, earlier[0]) if earlier else self._claim(ctx, attempt))
        if pod is None:
            return False
        await self._warm_started(ctx, attempt, pod)
        return True

    async def _hand_over_claimed(self, ctx: ReconcilePass, attempt: int,
                                 pod: dict[str, Any]) -> dict[str, Any] | None:
        """A pod claimed for the attempt by an earlier pass that did not record it.

        It was handed over already (its log says so), or is handed over now; failing both, it is deleted
        (None: launch cold). Never two pods, never two payloads.
        """
        spec, _ = ctx.require()
        if not (pod_finished(pod) or await self._payload_arrived(pod)):
            handed = await self.pools.hand_over(pod, ctx.ref, spec, attempt, ctx.class_name)
            if not handed and not await self._payload_arrived(pod):
                await self.pools.delete(pod)
                return None
        return pod

    async def _claim(self, ctx: ReconcilePass, attempt: int) -> dict[str, Any] | None:
        """Claim a ready pod of the class's pool in the namespace and hand it over; None to launch cold."""
        spec, cls = ctx.require()
        namespace = ctx.key[0]
        if not self.pools.has_pool(namespace, ctx.class_name):
            return None
        pod = await self.pools.claim(ctx.ref, spec, cls, ctx.class_name, attempt)
        if pod is None:
            return None
        self.state.remember_pod(pod["metadata"].get("namespace", ""), pod)
        if not await self.pools.hand_over(pod, ctx.ref, spec, attempt, ctx.class_name):
            await self.pools.delete(pod)
            return None
        return pod

    async def _warm_started(self, ctx: ReconcilePass, attempt: int, pod: dict[str, Any]) -> None:
        """Record the handed-over warm pod: launched and Running in one status write."""
        namespace = ctx.key[0]
        self.state.remember_pod(pod["metadata"].get("namespace", ""), pod)
        name = pod["metadata"]["name"]
        patch = st.warm_started(ctx.status, attempt=attempt, pod=name, now=ctx.now, generation=ctx.generation,
                                correlation_id=ctx.correlation_id)
        updated = await self.state.patch_status(ctx.key, ctx.body, patch)
        self.state.track_phase(ctx.key, ctx.class_name, Phase.RUNNING)
        pool = (pod["metadata"].get("labels") or {}).get(LABEL_CLAIMED_FROM)
        self.state.event(updated, EventType.NORMAL, EventReason.LAUNCHED,
                         f"Claimed warm pod {name} from pool {pool} for attempt {attempt}")
        log.info("launched warm", namespace=namespace, execution=ctx.key[1], attempt=attempt, pod=name,
                 correlation_id=ctx.correlation_id)
        await self.outcomes.user_code_started(ctx, attempt, rfc3339(self.state.clock()), launch=Launch.WARM)
        if pod_finished(pod):
            self.state.spawn(self.reconcile(ctx.key))

    async def _attempt_pods(self, ctx: ReconcilePass, attempt: int) -> list[dict[str, Any]]:
        """Pods an earlier pass (or the process before a restart) made or claimed for this attempt."""
        uid = ctx.ref.uid

        def ours(pod: Mapping[str, Any]) -> bool:
            meta = pod.get("metadata") or {}
            owned = any(r.get("uid") == uid and r.get("controller") for r in meta.get("ownerReferences") or [])
            return owned and (meta.get("labels") or {}).get(LABEL_ATTEMPT) == str(attempt) and \
                not meta.get("deletionTimestamp")

        found = [pod for pod in self.state.pods.values() if ours(pod)]
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
        """Whether the warm pod has its payload: handed over by this process, or its log says so."""
        if str(pod["metadata"].get("uid")) in self.pools.handed:
            return True
        text = await self.state.log_tail(pod["metadata"].get("namespace", ""), pod["metadata"]["name"],
                                         lines=100000)
        return handed_over(text)

    def _active_pods(self, class_name: str, key: Key) -> int:
        """Unfinished sandbox pods of a class, other than those of `key` (from the pod watch)."""
        label = label_value(class_name)
        count = 0
        for (namespace, _), pod in self.state.pods.items():
            meta = pod.get("metadata", {})
            if (meta.get("labels") or {}).get(LABEL_EXECUTION_CLASS) != label:
                continue
            if (namespace, execution_owner(pod)) == key or pod_finished(pod):
                continue
            count += 1
        return count


def _differs(status: Mapping[str, Any], patch: Mapping[str, Any], fields: tuple[str, ...]) -> bool:
    return any(status.get(f) != patch.get(f) for f in fields)


async def create_or_get(client: KubeClient, collection: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """Create; if it already exists (a repeated step), return the existing object instead."""
    try:
        return await client.post(collection, manifest)
    except ApiError as exc:
        if exc.already_exists:
            return await client.get(f"{collection}/{manifest['metadata']['name']}")
        raise
