"""Warm pools, the pure part: pool pods, their template hash, the claim patch, the refill plan.

A WarmPool keeps `replicas` ready, unclaimed sandbox pods of one ExecutionClass in its namespace. Such
a pod is the class's hardened pod at the class's default resources, with the runner started in warm
mode (interpreter up, `warmImports` imported) and waiting for one payload on its stdin.

Claiming a pod is one resourceVersion-guarded merge patch: it drops the pool label (the pod leaves
the pool), adds the Execution's labels, sets the Execution as the pod's only (controller) owner and
gives it a deadline. Two claims of one pod cannot both succeed: the second carries a stale
resourceVersion and gets 409.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from execution_operator.api import (
    ANNOTATION_CLAIMED_BY,
    ANNOTATION_CORRELATION_ID,
    API_VERSION,
    LABEL_ATTEMPT,
    LABEL_CLAIMED_FROM,
    LABEL_CORRELATION_ID,
    LABEL_EXECUTION,
    LABEL_EXECUTION_CLASS,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_POOL_TEMPLATE,
    LABEL_WARM_POOL,
    MANAGED_BY,
    ConditionReason,
    ConditionStatus,
    Kind,
)
from execution_operator.classify import pod_finished
from execution_operator.errors import ErrorInfo, ErrorType
from execution_operator.models import ExecutionClassSpec, ExecutionSpec
from execution_operator.runner import warm
from execution_operator.sandbox import (
    NETWORK_DENY_LABEL,
    ExecutionRef,
    active_deadline_seconds,
    build_warm_pod_spec,
    dns_prefix,
    effective_resources,
    input_json,
    is_label_safe,
    label_value,
    owner_reference,
    short_hash,
)
from execution_operator.status import parse_time

POOL_LABEL = LABEL_WARM_POOL
TEMPLATE_LABEL = LABEL_POOL_TEMPLATE
CLAIMED_FROM_LABEL = LABEL_CLAIMED_FROM
CLAIM_ANNOTATION = ANNOTATION_CLAIMED_BY
#: The supervisor prints this line when its payload is complete (the pod's evidence of a handover).
PAYLOAD_MARKER = warm.PAYLOAD_MARKER
IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})


def template_hash(cls: ExecutionClassSpec) -> str:
    """What a pool pod was built from: a pod of another template is replaced, never handed out."""
    spec = build_warm_pod_spec(cls, _warm_env(cls))
    # The network label is part of it: a pod of a class that now denies the network must not be handed out.
    return short_hash(json.dumps([spec, cls.allow_network], sort_keys=True), length=10)


def _warm_env(cls: ExecutionClassSpec) -> list[dict[str, str]]:
    return [
        {"name": warm.WARM_ENV, "value": "1"},
        {"name": warm.WARM_IMPORTS_ENV, "value": ",".join(cls.warm_imports)},
    ]


def pool_selector(pool: str) -> str:
    """The label selector of a pool's unclaimed pods (status.selector, for the scale subresource)."""
    return f"{POOL_LABEL}={label_value(pool)}"


def build_pool_pod(namespace: str, pool: str, pool_uid: str, class_name: str, cls: ExecutionClassSpec,
                   suffix: str | None = None) -> dict[str, Any]:
    """An unclaimed pod of `pool`, owned by the WarmPool (deleting the pool collects its pods)."""
    template = template_hash(cls)
    labels = {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_NAME: "sandbox",
        POOL_LABEL: label_value(pool),
        TEMPLATE_LABEL: template,
        LABEL_EXECUTION_CLASS: label_value(class_name),
    }
    if not cls.allow_network:
        labels[NETWORK_DENY_LABEL] = "deny"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{dns_prefix(pool, 40)}-{template[:6]}-{suffix or secrets.token_hex(4)}",
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [{"apiVersion": API_VERSION, "kind": Kind.WARM_POOL, "name": pool, "uid": pool_uid,
                                 "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": build_warm_pod_spec(cls, _warm_env(cls)),
    }


def fits_pool(spec: ExecutionSpec, cls: ExecutionClassSpec) -> bool:
    """Whether a pool pod of the class can run this Execution: it needs the class's default resources."""
    return spec.resources is None or effective_resources(spec, cls) == effective_resources(ExecutionSpec(code="#"),
                                                                                          cls)


def claim_patch(pod: Mapping[str, Any], ref: ExecutionRef, class_name: str, spec: ExecutionSpec,
                cls: ExecutionClassSpec, attempt: int, now: datetime) -> dict[str, Any]:
    """The merge patch that claims `pod` for (Execution, attempt), guarded by its resourceVersion."""
    meta = pod["metadata"]
    labels: dict[str, str | None] = {
        POOL_LABEL: None,
        CLAIMED_FROM_LABEL: (meta.get("labels") or {}).get(POOL_LABEL),
        LABEL_EXECUTION: label_value(ref.name),
        LABEL_ATTEMPT: str(attempt),
    }
    if is_label_safe(ref.correlation_id):
        labels[LABEL_CORRELATION_ID] = ref.correlation_id
    created = parse_time(meta.get("creationTimestamp")) or now
    age = max(0, int((now - created).total_seconds()) + 1)
    return {
        "metadata": {
            "resourceVersion": meta.get("resourceVersion"),
            "labels": labels,
            "annotations": {CLAIM_ANNOTATION: f"{ref.uid}/{attempt}", ANNOTATION_CORRELATION_ID: ref.correlation_id},
            "ownerReferences": [owner_reference(ref)],
        },
        # Set while unset (allowed on a running pod): the same backstop a cold pod has, from now on.
        "spec": {"activeDeadlineSeconds": age + active_deadline_seconds(spec, cls)},
    }


def claimed_for(pod: Mapping[str, Any], uid: str, attempt: int) -> bool:
    """Whether `pod` was claimed for this Execution's attempt (by us, before a restart perhaps)."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    owned = any(ref.get("uid") == uid and ref.get("controller") for ref in meta.get("ownerReferences") or [])
    return owned and CLAIMED_FROM_LABEL in labels and labels.get(LABEL_ATTEMPT) == str(attempt)


def payload(ref: ExecutionRef, spec: ExecutionSpec, attempt: int) -> bytes:
    """What is written on the claimed pod's stdin: the code, the input and the per-attempt settings."""
    return warm.encode_payload(spec.code, input_json(spec), timeout_seconds=spec.timeout_seconds, attempt=attempt,
                               execution=ref.name, correlation_id=ref.correlation_id)


def handed_over(log_text: str | None) -> bool:
    """Whether the pod's log shows the runner received its payload."""
    return bool(log_text) and any(line.startswith(PAYLOAD_MARKER) for line in (log_text or "").splitlines())


def _running(pod: Mapping[str, Any]) -> bool:
    return any("running" in (cs.get("state") or {}) for cs in (pod.get("status") or {}).get("containerStatuses") or [])


def is_ready(pod: Mapping[str, Any]) -> bool:
    """Ready to be claimed: running, not being deleted, not finished."""
    meta = pod.get("metadata") or {}
    return _running(pod) and not meta.get("deletionTimestamp") and not pod_finished(pod)


def image_pull_failing(pod: Mapping[str, Any]) -> str | None:
    """The message of a pod waiting on an image it cannot pull, if it is."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in IMAGE_PULL_REASONS:
            return str(waiting.get("message") or waiting["reason"])
    return None


def surge(replicas: int) -> int:
    """How many pods of a pool may be starting at once."""
    return max(2, replicas // 4)


def ended_unclaimed(pod: Mapping[str, Any]) -> ErrorInfo:
    """The breaker's failure for a pool pod that ended before any claim."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (cs.get("state") or {}).get("terminated")
        if terminated:
            return ErrorInfo.of(ErrorType.INTERNAL_ERROR, "A warm pool pod ended before it was claimed (exit code "
                                f"{terminated.get('exitCode')}, {terminated.get('reason') or 'no reason'})",
                                podName=(pod.get("metadata") or {}).get("name"))
    reason = (pod.get("status") or {}).get("reason") or "no reason"
    return ErrorInfo.of(ErrorType.INTERNAL_ERROR, f"A warm pool pod ended before it was claimed ({reason})",
                        podName=(pod.get("metadata") or {}).get("name"))


@dataclass
class PoolPlan:
    """What one pass over a pool decides."""

    ready: list[dict[str, Any]] = field(default_factory=list)
    starting: list[dict[str, Any]] = field(default_factory=list)
    #: Pods to delete: of another template, finished, or stuck pending; with the breaker failure, if any.
    delete: list[tuple[dict[str, Any], ErrorInfo | None]] = field(default_factory=list)
    #: Pods to create now (before the breaker's admission).
    create: int = 0
    #: Pods over `replicas` (deleted, starting ones first).
    surplus: list[dict[str, Any]] = field(default_factory=list)
    image_problem: str | None = None
    #: When to look again (the earliest pending timeout).
    wake_at: datetime | None = None


def plan_pool(pods: Iterable[Mapping[str, Any]], *, replicas: int, template: str | None, now: datetime,
              pending_timeout: float, stuck: Any) -> PoolPlan:
    """Sort a pool's unclaimed pods and decide what to delete and how many to create.

    `template` None means the class is gone: every pod goes. `stuck(pod, seconds)` classifies a pod
    that has not started (classify.classify_stuck_pod), so image and scheduling failures are the
    breaker's like those of any launch.
    """
    plan = PoolPlan()
    for raw in pods:
        pod = dict(raw)
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        if template is None or (meta.get("labels") or {}).get(TEMPLATE_LABEL) != template:
            plan.delete.append((pod, None))
            continue
        if pod_finished(pod):
            # Nobody claimed it and nobody deleted it: the sandbox itself failed (a broken entrypoint, a
            # crash while importing). A launch failure for the breaker, or a pool would restart it forever.
            plan.delete.append((pod, ended_unclaimed(pod)))
            continue
        if is_ready(pod):
            plan.ready.append(pod)
            continue
        created = parse_time(meta.get("creationTimestamp")) or now
        error = stuck(pod, (now - created).total_seconds())
        if error is not None:
            plan.delete.append((pod, error))
            continue
        plan.image_problem = plan.image_problem or image_pull_failing(pod)
        plan.starting.append(pod)
        due = created.timestamp() + pending_timeout + 0.5
        if plan.wake_at is None or due < plan.wake_at.timestamp():
            plan.wake_at = datetime.fromtimestamp(due, tz=now.tzinfo)
    live = len(plan.ready) + len(plan.starting)
    if template is not None and live < replicas:
        # A bounded surge: a pool filling (or refilling after a burst of claims) starts a few pods at a
        # time, so it does not take the CPU the burst's own cold launches need.
        plan.create = max(0, min(replicas - live, surge(replicas) - len(plan.starting)))
    elif live > replicas:
        extra = live - replicas
        plan.surplus = (plan.starting + plan.ready)[:extra]
    return plan


def pool_condition(plan: PoolPlan, *, replicas: int, class_missing: bool, circuit_message: str | None,
                   quota_message: str | None) -> tuple[str, str, str]:
    """(status, reason, message) of the pool's Ready condition."""
    ready = len(plan.ready)
    if class_missing:
        return ConditionStatus.FALSE, ConditionReason.CLASS_NOT_FOUND, "The pool's ExecutionClass does not exist"
    if ready >= replicas:
        return ConditionStatus.TRUE, ConditionReason.READY, f"{ready} of {replicas} pods ready"
    if circuit_message:
        return ConditionStatus.FALSE, ConditionReason.CIRCUIT_OPEN, circuit_message
    if quota_message:
        return ConditionStatus.FALSE, ConditionReason.QUOTA_EXCEEDED, quota_message
    if plan.image_problem:
        return ConditionStatus.FALSE, ConditionReason.IMAGE_PULL_FAILING, plan.image_problem
    return ConditionStatus.FALSE, ConditionReason.FILLING, f"{ready} of {replicas} pods ready"
