"""What the controller reads of the objects it watches: keys, correlation ids, owners and slim pods.

Pure functions of a body (an Execution's or a pod's, as a watch or a response gives it); no I/O.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from execution_operator.api import ANNOTATION_CORRELATION_ID, GROUP, Kind
from execution_operator.bounds import MAX_CORRELATION_ID_CHARS
from execution_operator.status import parse_time

Key = tuple[str, str]


def key_of(body: Mapping[str, Any]) -> Key:
    """The (namespace, name) key of an object, as the caches and locks are keyed."""
    meta = body["metadata"]
    return meta.get("namespace", ""), meta["name"]


def correlation_id(body: Mapping[str, Any]) -> str:
    """spec.correlationId, else the annotation, else one derived from the uid (stable across restarts).

    Cut to the length status.correlationId allows: the annotation has no bound of its own, and a
    value the status schema refuses would leave the Execution without any status.
    """
    spec = body.get("spec") or {}
    meta = body.get("metadata") or {}
    return str(
        spec.get("correlationId")
        or (meta.get("annotations") or {}).get(ANNOTATION_CORRELATION_ID)
        or (body.get("status") or {}).get("correlationId")
        or f"ex-{str(meta.get('uid') or uuid.uuid4()).replace('-', '')[:16]}"
    )[:MAX_CORRELATION_ID_CHARS]


def class_name_of(body: Mapping[str, Any]) -> str:
    """The Execution's spec.executionClassName, `default` when unset."""
    return str((body.get("spec") or {}).get("executionClassName") or "default")


def execution_owner(pod: Mapping[str, Any]) -> str | None:
    """The name of the Execution that owns `pod`, or None for a pod no Execution owns."""
    for ref in pod.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == Kind.EXECUTION and ref.get("apiVersion", "").startswith(f"{GROUP}/"):
            return str(ref["name"])
    return None


def slim_pod(pod: Mapping[str, Any]) -> dict[str, Any]:
    """What the controller needs of a pod: identity, owner, images, status (not the payload annotations)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp",
                                          "deletionTimestamp", "labels", "ownerReferences") if k in meta},
        "spec": {
            "nodeName": spec.get("nodeName"),
            "containers": [{"name": c.get("name"), "image": c.get("image")} for c in spec.get("containers") or []],
        },
        "status": pod.get("status") or {},
    }


def container_started_at(pod: Mapping[str, Any]) -> str | None:
    """When the sandbox container started (running or already terminated); None before it has."""
    for cs in pod.get("status", {}).get("containerStatuses") or []:
        state = cs.get("state") or {}
        if "running" in state:
            return str(state["running"].get("startedAt") or "") or None
        if "terminated" in state and state["terminated"].get("startedAt"):
            return str(state["terminated"]["startedAt"])
    return None


def condition_reason(status: Mapping[str, Any], ctype: str) -> str | None:
    """The reason of the status condition of type `ctype`, None when there is none."""
    for cond in status.get("conditions") or []:
        if cond.get("type") == ctype:
            return str(cond.get("reason"))
    return None


def duration_seconds(body: Mapping[str, Any]) -> float:
    """Seconds from the Execution's creation to its completionTime (0 when either is unknown)."""
    status = body.get("status") or {}
    start = parse_time(body.get("metadata", {}).get("creationTimestamp"))
    end = parse_time(status.get("completionTime"))
    return max(0.0, (end - start).total_seconds()) if start and end else 0.0
