"""Warm pools, the I/O part: keep each WarmPool filled, claim a pod for an Execution, hand it over.

Level-triggered like the Execution controller: a pool's pass (`reconcile`) looks at the pool, its
class and its unclaimed pods (from the pod watch) and acts on the difference. Refills go through the
class's circuit breaker like every launch, so a pool of a broken class cannot storm; pool pods that
fail to start are the breaker's failures, pods that start its successes.

The decisions are in `warmpool` (pure); this module makes the API calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pydantic
import structlog

from execution_operator import metrics
from execution_operator import status as st
from execution_operator import warmpool as wp
from execution_operator.api import API_VERSION, WARM_POOLS, ConditionType, Kind
from execution_operator.classify import classify_create_error, classify_stuck_pod
from execution_operator.errors import ErrorType
from execution_operator.gates import Gates
from execution_operator.k8s import ApiError, KubeClient, path_for, resource_version
from execution_operator.models import ExecutionClassSpec, ExecutionSpec, WarmPoolSpec
from execution_operator.sandbox import ExecutionRef, label_value

Key = tuple[str, str]
log = structlog.get_logger("execution_operator.pools")

#: Pool status writes are coalesced: at most one per pool per this many seconds.
STATUS_DEBOUNCE_SECONDS = 1.0
#: Pods tried per claim before falling back to a cold launch (each loss is a 409 to another claimer).
CLAIM_TRIES = 3
HANDOVER_TIMEOUT_SECONDS = 10.0


def _key(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


class WarmPools:
    """Pools and their unclaimed pods, fed by watch events; claims and handovers for the controller."""

    def __init__(
        self,
        client: KubeClient,
        gates: Gates,
        *,
        classes: dict[str, dict[str, Any]],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        ensure_network_policy: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.client = client
        self.gates = gates
        self.classes = classes
        self.clock = clock
        self.ensure_network_policy = ensure_network_policy
        self.pools: dict[Key, dict[str, Any]] = {}
        #: Unclaimed pool pods (whole bodies: they are small, and a claim needs their resourceVersion).
        self.pods: dict[Key, dict[str, Any]] = {}
        self.locks: dict[Key, asyncio.Lock] = {}
        self.timers: dict[Key, asyncio.TimerHandle] = {}
        self.status_timers: dict[Key, asyncio.TimerHandle] = {}
        #: Claims per pool not yet in its status.claimed.
        self.claims: dict[Key, int] = {}
        self.claiming: set[Key] = set()
        #: uids of pool pods whose start the breaker has been told about.
        self.started: set[str] = set()
        #: uids of pods handed their payload by this process.
        self.handed: set[str] = set()
        #: uids of pods this process claimed (until they are deleted).
        self.claimed: set[str] = set()
        self.quota: dict[Key, str] = {}
        self.circuit: dict[Key, str] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    # ----------------------------------------------------------------- watch events

    async def on_pool_event(self, body: Mapping[str, Any], event_type: str | None) -> None:
        """Cache the pool and fill it; a deleted pool's pods go by their owner reference."""
        key = _key(body)
        if event_type == "DELETED":
            # Its pods are collected by their owner reference; none is handed out meanwhile.
            old = self.pools.pop(key, None)
            if old is not None:
                metrics.forget_warm_pool(key[0], str((old.get("spec") or {}).get("executionClassName")))
            return
        current = self.pools.get(key)
        replaced = current is not None and current["metadata"].get("uid") != body["metadata"].get("uid")
        if current is None or replaced or resource_version(body) >= resource_version(current):
            self.pools[key] = dict(body)
        await self.reconcile(key)

    def owns(self, body: Mapping[str, Any]) -> bool:
        """A pool's pod, unclaimed or claimed from it."""
        labels = (body.get("metadata") or {}).get("labels") or {}
        return wp.POOL_LABEL in labels or wp.CLAIMED_FROM_LABEL in labels

    async def on_pod_event(self, body: Mapping[str, Any], event_type: str | None) -> None:
        """Track unclaimed pool pods; a claimed pod (no pool label) leaves this cache."""
        pkey = _key(body)
        labels = (body.get("metadata") or {}).get("labels") or {}
        pool_label = labels.get(wp.POOL_LABEL) or labels.get(wp.CLAIMED_FROM_LABEL)
        uid = str((body.get("metadata") or {}).get("uid"))
        if event_type == "DELETED" or wp.POOL_LABEL not in labels or uid in self.claimed:
            self.pods.pop(pkey, None)  # a late event from before our claim must not bring it back
            if event_type == "DELETED":
                self.claimed.discard(uid)
                self.started.discard(uid)
                self.handed.discard(uid)
        else:
            current = self.pods.get(pkey)
            if current is None or resource_version(body) >= resource_version(current):
                self.pods[pkey] = dict(body)
        if pool_label:
            for key in self._pools_labelled(pkey[0], pool_label):
                await self.reconcile(key)

    async def on_class_event(self, class_name: str) -> None:
        """A class changed: its pools' pods of another template are replaced."""
        for key in [k for k, b in self.pools.items() if _class_of(b) == class_name]:
            await self.reconcile(key)

    def _pools_labelled(self, namespace: str, label: str) -> list[Key]:
        return [k for k in self.pools if k[0] == namespace and label_value(k[1]) == label]

    def has_pool(self, namespace: str, class_name: str) -> bool:
        """Whether the namespace has a pool of the class."""
        return any(k[0] == namespace and _class_of(b) == class_name for k, b in self.pools.items())

    # ----------------------------------------------------------------- keeping a pool filled

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _wake_at(self, key: Key, when: datetime) -> None:
        loop = asyncio.get_running_loop()
        old = self.timers.pop(key, None)
        if old is not None:
            old.cancel()
        delay = max(0.0, (when - self.clock()).total_seconds())
        self.timers[key] = loop.call_later(delay, lambda: self._spawn(self.reconcile(key)))

    async def reconcile(self, key: Key) -> None:
        """One pass over a pool under its lock; a failure is logged, counted and retried."""
        lock = self.locks.setdefault(key, asyncio.Lock())
        async with lock:
            try:
                await self._reconcile_once(key)
            except Exception as exc:  # noqa: BLE001 - one pool's failure is logged, counted and retried
                metrics.record_reconcile_error(Kind.WARM_POOL)
                log.warning("warm pool reconcile failed; will retry", namespace=key[0], pool=key[1],
                            error=f"{type(exc).__name__}: {exc}"[:500])
                self._wake_at(key, self.clock() + timedelta(seconds=5))

    def _snapshot(self, key: Key) -> tuple[WarmPoolSpec, ExecutionClassSpec | None, wp.PoolPlan] | None:
        """The pool's spec, its class (None when missing or invalid) and the plan for its pods now."""
        body = self.pools.get(key)
        if body is None:
            return None
        try:
            spec = WarmPoolSpec.model_validate(body.get("spec") or {})
        except pydantic.ValidationError:
            return None  # the CRD's schema refuses such a pool; nothing sensible to do with one
        cls_body = self.classes.get(spec.execution_class_name)
        cls: ExecutionClassSpec | None = None
        if cls_body is not None:
            with contextlib.suppress(pydantic.ValidationError):
                cls = ExecutionClassSpec.model_validate(cls_body.get("spec") or {})
        label = label_value(key[1])
        pods = [p for k, p in self.pods.items()
                if k[0] == key[0] and ((p.get("metadata") or {}).get("labels") or {}).get(wp.POOL_LABEL) == label]
        pending_timeout = float(cls.pending_timeout_seconds if cls else 120)

        def stuck(pod: Mapping[str, Any], seconds: float) -> Any:
            return classify_stuck_pod(pod, pending_seconds=seconds, pending_timeout=pending_timeout)

        plan = wp.plan_pool(pods, replicas=spec.replicas, template=wp.template_hash(cls) if cls else None,
                            now=self.clock(), pending_timeout=pending_timeout, stuck=stuck)
        return spec, cls, plan

    async def _reconcile_once(self, key: Key) -> None:
        snapshot = self._snapshot(key)
        if snapshot is None:
            return
        spec, cls, plan = snapshot
        body = self.pools[key]
        class_name = spec.execution_class_name
        for pod, error in plan.delete:
            if error is not None:
                await self.gates.record(class_name, self._holder(key, pod), 0, reached_user_code=False, error=error)
            await self._delete(pod)
        for pod in plan.surplus:
            await self._delete(pod)
        for pod in plan.ready:
            uid = str(pod["metadata"].get("uid"))
            if uid not in self.started:
                # A pool pod that started proves the class's image and scheduling work.
                self.started.add(uid)
                await self.gates.record(class_name, self._holder(key, pod), 0, reached_user_code=True)
        if cls is not None and plan.create:
            await self._refill(key, body, class_name, cls, plan)
        # Only classes that exist name a series: a pool naming any string cannot grow them.
        series = class_name if class_name in self.classes else metrics.UNKNOWN
        metrics.set_warm_pool_pods(key[0], series, "ready", len(plan.ready))
        metrics.set_warm_pool_pods(key[0], series, "starting", len(plan.starting))
        current = body.get("status") or {}
        if _status_differs(current, self._status_patch(key, spec, cls, plan, self.claims.get(key, 0))) and \
                key not in self.status_timers:
            delay = STATUS_DEBOUNCE_SECONDS if current else 0.0
            self.status_timers[key] = asyncio.get_running_loop().call_later(
                delay, lambda: self._spawn(self._write_status(key)))
        if plan.wake_at is not None:
            self._wake_at(key, plan.wake_at)

    def _status_patch(self, key: Key, spec: WarmPoolSpec, cls: ExecutionClassSpec | None, plan: wp.PoolPlan,
                      claims: int) -> dict[str, Any]:
        body = self.pools[key]
        current = body.get("status") or {}
        generation = body["metadata"].get("generation")
        cstatus, reason, message = wp.pool_condition(plan, replicas=spec.replicas, class_missing=cls is None,
                                                     circuit_message=self.circuit.get(key),
                                                     quota_message=self.quota.get(key))
        return {
            "replicas": len(plan.ready) + len(plan.starting),
            "readyReplicas": len(plan.ready),
            "claimed": int(current.get("claimed") or 0) + claims,
            "selector": wp.pool_selector(key[1]),
            "observedGeneration": generation,
            "conditions": st.condition(current.get("conditions"), ConditionType.READY, cstatus, reason, message,
                                       st.rfc3339(self.clock()), generation),
        }

    async def _write_status(self, key: Key) -> None:
        """Write the pool's status (coalesced: bursts of claims and refills make one write)."""
        self.status_timers.pop(key, None)
        async with self.locks.setdefault(key, asyncio.Lock()):
            snapshot = self._snapshot(key)
            if snapshot is None:
                return
            spec, cls, plan = snapshot
            claims = self.claims.pop(key, 0)
            patch = self._status_patch(key, spec, cls, plan, claims)
            try:
                updated = await self.client.patch(path_for(API_VERSION, WARM_POOLS, key[0], key[1], "status"),
                                                  {"status": patch})
            except ApiError as exc:
                self.claims[key] = self.claims.get(key, 0) + claims
                if not exc.not_found:
                    log.warning("warm pool status not written", namespace=key[0], pool=key[1], error=str(exc)[:300])
                return
            current = self.pools.get(key)
            if current is not None and resource_version(updated) >= resource_version(current):
                self.pools[key] = updated

    def _holder(self, key: Key, pod: Mapping[str, Any] | str) -> Key:
        name = pod if isinstance(pod, str) else str(pod["metadata"]["name"])
        return key[0], f"warmpool/{key[1]}/{name}"

    async def _refill(self, key: Key, body: Mapping[str, Any], class_name: str, cls: ExecutionClassSpec,
                      plan: wp.PoolPlan) -> None:
        self.circuit.pop(key, None)
        self.quota.pop(key, None)
        if not cls.allow_network and self.ensure_network_policy is not None:
            await self.ensure_network_policy(key[0])
        for _ in range(plan.create):
            manifest = wp.build_pool_pod(key[0], key[1], str(body["metadata"].get("uid")), class_name, cls,
                                         suffix=secrets.token_hex(4))
            admission = await self.gates.admit(class_name, self._holder(key, manifest["metadata"]["name"]), 0)
            if not admission.allowed:
                self.circuit[key] = admission.message
                retry_at = st.parse_time(admission.retry_at)
                if retry_at is not None:
                    self._wake_at(key, retry_at + timedelta(seconds=0.5))
                return
            try:
                created = await self.client.post(path_for("v1", "pods", key[0]), manifest)
            except ApiError as exc:
                error = classify_create_error(exc.status, exc.body)
                await self.gates.record(class_name, self._holder(key, manifest["metadata"]["name"]), 0,
                                        reached_user_code=False, error=error)
                if error.type == ErrorType.QUOTA_EXCEEDED:
                    self.quota[key] = error.message
                self._wake_at(key, self.clock() + timedelta(seconds=5))
                return
            self.pods[_key(created)] = created
            plan.starting.append(created)

    async def _delete(self, pod: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
        self.pods.pop((str(meta.get("namespace")), str(meta["name"])), None)
        with contextlib.suppress(ApiError):
            await self.client.delete(path_for("v1", "pods", meta.get("namespace"), meta["name"]),
                                     {"gracePeriodSeconds": 1, "preconditions": {"uid": meta.get("uid")}})

    # ----------------------------------------------------------------- claim and handover

    async def claim(self, ref: ExecutionRef, spec: ExecutionSpec, cls: ExecutionClassSpec, class_name: str,
                    attempt: int) -> dict[str, Any] | None:
        """Claim a ready pod of a pool of the class in the Execution's namespace, or None (launch cold)."""
        namespace = ref.namespace
        pool_keys = [k for k, b in self.pools.items() if k[0] == namespace and _class_of(b) == class_name]
        if not pool_keys or not wp.fits_pool(spec, cls):
            return None
        labels = {label_value(k[1]): k for k in pool_keys}
        template = wp.template_hash(cls)
        candidates = sorted(
            (p for k, p in self.pods.items()
             if k[0] == namespace and k not in self.claiming and wp.is_ready(p)
             and (p["metadata"].get("labels") or {}).get(wp.POOL_LABEL) in labels
             and (p["metadata"].get("labels") or {}).get(wp.TEMPLATE_LABEL) == template),
            key=lambda p: str(p["metadata"].get("creationTimestamp") or ""),
        )
        for pod in candidates[:CLAIM_TRIES]:
            pkey = _key(pod)
            pool_key = labels[pod["metadata"]["labels"][wp.POOL_LABEL]]
            self.claiming.add(pkey)
            try:
                patch = wp.claim_patch(pod, ref, class_name, spec, cls, attempt, self.clock())
                claimed = await self.client.patch(path_for("v1", "pods", *pkey), patch)
            except ApiError as exc:
                if exc.status in (404, 409, 422):
                    continue  # claimed by another Execution, or gone: try the next one
                log.warning("warm claim failed", namespace=namespace, pod=pkey[1], error=str(exc)[:300])
                break
            finally:
                self.claiming.discard(pkey)
            self.pods.pop(pkey, None)
            self.claimed.add(str(pod["metadata"].get("uid")))
            self.claims[pool_key] = self.claims.get(pool_key, 0) + 1
            self._spawn(self.reconcile(pool_key))  # refill at once
            return claimed
        metrics.record_warm_claim(class_name, "miss")
        for pool_key in pool_keys:
            self._spawn(self.reconcile(pool_key))
        return None

    async def hand_over(self, pod: Mapping[str, Any], ref: ExecutionRef, spec: ExecutionSpec, attempt: int,
                        class_name: str) -> bool:
        """Write the payload on the claimed pod's stdin (once: `stdinOnce`). False if that failed."""
        meta = pod["metadata"]
        try:
            await self.client.write_stdin(path_for("v1", "pods", meta.get("namespace"), meta["name"], "attach"),
                                          wp.payload(ref, spec, attempt), container="sandbox",
                                          limit_seconds=HANDOVER_TIMEOUT_SECONDS)
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("warm handover failed", namespace=ref.namespace, execution=ref.name, pod=meta["name"],
                        attempt=attempt, error=f"{type(exc).__name__}: {exc}"[:300])
            metrics.record_warm_claim(class_name, "handover_failed")
            return False
        self.handed.add(str(meta.get("uid")))
        metrics.record_warm_claim(class_name, "hit")
        return True

    async def delete(self, pod: Mapping[str, Any]) -> None:
        """Delete a pod (a claimed one whose handover failed): never handed out again."""
        await self._delete(pod)


def _status_differs(current: Mapping[str, Any], patch: Mapping[str, Any]) -> bool:
    def strip(conditions: Any) -> list[Any]:
        return [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in conditions or []]

    if strip(current.get("conditions")) != strip(patch.get("conditions")):
        return True
    return any(current.get(k) != v for k, v in patch.items() if k != "conditions")


def _class_of(body: Mapping[str, Any]) -> str:
    return str((body.get("spec") or {}).get("executionClassName") or "")
