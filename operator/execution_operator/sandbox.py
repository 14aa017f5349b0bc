"""Pure construction of the sandbox pod and its code/input carrier.

Everything here is deterministic in (execution, class, attempt), so a repeated launch after a crash
finds the pod it made before (409 AlreadyExists) instead of making a second one.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from execution_operator.api import (
    ANNOTATION_CODE,
    ANNOTATION_CORRELATION_ID,
    ANNOTATION_INPUT,
    API_VERSION,
    LABEL_ATTEMPT,
    LABEL_CORRELATION_ID,
    LABEL_EXECUTION,
    LABEL_EXECUTION_CLASS,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_NETWORK,
    MANAGED_BY,
    Kind,
)
from execution_operator.models import ExecutionClassSpec, ExecutionSpec, ResourceList

DEFAULT_CPU = "500m"
DEFAULT_MEMORY = "256Mi"
RUNNER_COMMAND = ["python", "-m", "execution_operator.runner"]
SANDBOX_UID = 65532
NETWORK_DENY_LABEL = LABEL_NETWORK
NETWORK_POLICY_NAME = "execution-operator-sandbox-deny-all"
PAYLOAD_DIR = "/sandbox/payload"
#: Pod annotations are limited to 256 KiB in total: carry payloads up to this size in them.
ANNOTATION_CARRIER_MAX_BYTES = 200 * 1024
#: ConfigMaps are limited to 1 MiB of data.
CONFIGMAP_CARRIER_MAX_BYTES = 1000 * 1024
CODE_ANNOTATION = ANNOTATION_CODE
INPUT_ANNOTATION = ANNOTATION_INPUT
OUTPUT_LIMIT_BYTES = 131072
STREAM_TAIL_BYTES = 16384
GRACE_SECONDS = 5

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


class PayloadTooLarge(ValueError):
    """Code and input do not fit a carrier even compressed."""


@dataclass(frozen=True)
class ExecutionRef:
    """What the pod builder needs to know about the Execution object itself."""

    namespace: str
    name: str
    uid: str
    correlation_id: str


def short_hash(*parts: str, length: int = 6) -> str:
    """A short stable hash that keeps derived names unique when their readable part is cut."""
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:length]


def dns_prefix(name: str, max_len: int) -> str:
    """`name` cut to `max_len` characters that may start a DNS-1123 name (`ex` if none are left)."""
    cleaned = re.sub(r"[^a-z0-9-]", "-", name.lower())[:max_len].strip("-")
    return cleaned or "ex"


def pod_name(ref: ExecutionRef, attempt: int) -> str:
    """`<name prefix>-<uid hash>-a<attempt>`: stable per attempt, at most 63 characters."""
    return f"{dns_prefix(ref.name, 45)}-{short_hash(ref.uid)}-a{attempt}"


def carrier_name(ref: ExecutionRef) -> str:
    """The ConfigMap carrying a payload too big for annotations; one per Execution, shared by its attempts."""
    return f"{dns_prefix(ref.name, 45)}-{short_hash(ref.uid)}-payload"


def label_value(value: str) -> str:
    """A label-safe form of any string: itself when valid, else a truncated prefix plus a hash."""
    if len(value) <= 63 and _LABEL_VALUE.match(value):
        return value
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", value)[:54].strip("-_.")
    return f"{cleaned}-{short_hash(value, length=8)}".strip("-")


def is_label_safe(value: str) -> bool:
    """Whether `value` may be used as a label value unchanged."""
    return len(value) <= 63 and bool(_LABEL_VALUE.match(value))


def effective_resources(spec: ExecutionSpec, cls: ExecutionClassSpec) -> dict[str, str]:
    """The cpu and memory an attempt gets: the Execution's request, else the class's defaults, else ours."""
    defaults = cls.resources.defaults if cls.resources and cls.resources.defaults else None
    requested = spec.resources or ResourceList()
    return {
        "cpu": str(requested.cpu or (defaults.cpu if defaults and defaults.cpu else DEFAULT_CPU)),
        "memory": str(requested.memory or (defaults.memory if defaults and defaults.memory else DEFAULT_MEMORY)),
    }


def input_json(spec: ExecutionSpec) -> str | None:
    """The input as compact JSON, as the sandbox reads it; None when there is none."""
    return None if spec.input is None else json.dumps(spec.input, separators=(",", ":"))


def owner_reference(ref: ExecutionRef) -> dict[str, Any]:
    """The Execution as controller owner, so that its pods and carriers are garbage-collected with it."""
    return {
        "apiVersion": API_VERSION,
        "kind": Kind.EXECUTION,
        "name": ref.name,
        "uid": ref.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels_for(ref: ExecutionRef, class_name: str, attempt: int | None, allow_network: bool) -> dict[str, str]:
    """The labels of an Execution's pods and carriers: what the operator's server-side selectors match."""
    labels = {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_NAME: "sandbox",
        LABEL_EXECUTION: label_value(ref.name),
        LABEL_EXECUTION_CLASS: label_value(class_name),
    }
    if attempt is not None:
        labels[LABEL_ATTEMPT] = str(attempt)
    if is_label_safe(ref.correlation_id):
        labels[LABEL_CORRELATION_ID] = ref.correlation_id
    if not allow_network:
        labels[NETWORK_DENY_LABEL] = "deny"
    return labels


def uses_configmap_carrier(spec: ExecutionSpec) -> bool:
    """Whether the code and input are too big for annotations and travel in a ConfigMap."""
    size = len(spec.code.encode()) + len((input_json(spec) or "").encode())
    return size > ANNOTATION_CARRIER_MAX_BYTES


def build_carrier(ref: ExecutionRef, spec: ExecutionSpec, class_name: str) -> dict[str, Any]:
    """A ConfigMap with the gzip-compressed code and input, for payloads too big for annotations."""
    binary = {"code.py.gz": base64.b64encode(gzip.compress(spec.code.encode(), 6, mtime=0)).decode()}
    data = input_json(spec)
    if data is not None:
        binary["input.json.gz"] = base64.b64encode(gzip.compress(data.encode(), 6, mtime=0)).decode()
    size = sum(len(v) for v in binary.values())
    if size > CONFIGMAP_CARRIER_MAX_BYTES:
        raise PayloadTooLarge(f"code and input take {size} bytes compressed; the limit is 1000 KiB")
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": carrier_name(ref),
            "namespace": ref.namespace,
            "labels": labels_for(ref, class_name, None, True) | {NETWORK_DENY_LABEL: "none"},
            "ownerReferences": [owner_reference(ref)],
        },
        "binaryData": binary,
        "immutable": True,
    }


def _payload_volume(ref: ExecutionRef, spec: ExecutionSpec) -> tuple[dict[str, Any], dict[str, str]]:
    """The payload volume and the pod annotations that feed it."""
    if uses_configmap_carrier(spec):
        keys = [{"key": "code.py.gz", "path": "code.py.gz"}]
        if spec.input is not None:
            keys.append({"key": "input.json.gz", "path": "input.json.gz"})
        return {"name": "payload", "configMap": {"name": carrier_name(ref), "items": keys}}, {}
    annotations = {CODE_ANNOTATION: spec.code}
    items: list[dict[str, Any]] = [
        {"path": "code.py", "fieldRef": {"fieldPath": f"metadata.annotations['{CODE_ANNOTATION}']"}}
    ]
    data = input_json(spec)
    if data is not None:
        annotations[INPUT_ANNOTATION] = data
        items.append({"path": "input.json", "fieldRef": {"fieldPath": f"metadata.annotations['{INPUT_ANNOTATION}']"}})
    return {"name": "payload", "downwardAPI": {"items": items}}, annotations


def active_deadline_seconds(spec: ExecutionSpec, cls: ExecutionClassSpec) -> int:
    """A backstop only: the runner enforces the user's timeout itself, the operator the pending timeout."""
    return int(cls.pending_timeout_seconds + spec.timeout_seconds + 30)


def _base_env(timeout_seconds: int) -> list[dict[str, str]]:
    """The runner's settings every sandbox pod has (per-Execution ones are added by the caller)."""
    return [
        {"name": "SANDBOX_PAYLOAD_DIR", "value": PAYLOAD_DIR},
        {"name": "SANDBOX_INPUT_DIR", "value": "/input"},
        {"name": "SANDBOX_OUTPUT_DIR", "value": "/output"},
        {"name": "SANDBOX_TIMEOUT_SECONDS", "value": str(timeout_seconds)},
        {"name": "SANDBOX_OUTPUT_LIMIT_BYTES", "value": str(OUTPUT_LIMIT_BYTES)},
        {"name": "SANDBOX_STREAM_TAIL_BYTES", "value": str(STREAM_TAIL_BYTES)},
        {"name": "SANDBOX_TERMINATION_LOG", "value": "/dev/termination-log"},
    ]


def _env(cls: ExecutionClassSpec, env: list[dict[str, str]]) -> list[dict[str, str]]:
    """The container's environment: the runner's settings, then the interpreter's, then the class's own."""
    env = [*env, {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}, {"name": "HOME", "value": "/tmp"}]
    return env + [{"name": e.name, "value": e.value or ""} for e in cls.env or []]


def _volumes(payload: dict[str, Any] | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The container's mounts and the pod's volumes: bounded scratch space, and the payload (read-only) if any."""
    mounts: list[dict[str, Any]] = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "input", "mountPath": "/input"},
        {"name": "output", "mountPath": "/output"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        {"name": "input", "emptyDir": {"sizeLimit": "4Mi"}},
        {"name": "output", "emptyDir": {"sizeLimit": "16Mi"}},
    ]
    if payload is not None:
        mounts.insert(0, {"name": "payload", "mountPath": PAYLOAD_DIR, "readOnly": True})
        volumes.insert(0, payload)
    return mounts, volumes


def _container_security_context() -> dict[str, Any]:
    """The container's part of `restricted`: no privilege, no capability, a read-only root, seccomp."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_security_context() -> dict[str, Any]:
    """The pod's part of `restricted`: the sandbox's non-root user and group, seccomp."""
    return {
        "runAsNonRoot": True,
        "runAsUser": SANDBOX_UID,
        "runAsGroup": SANDBOX_UID,
        "fsGroup": SANDBOX_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container(cls: ExecutionClassSpec, resources: dict[str, str], env: list[dict[str, str]],
               mounts: list[dict[str, Any]], warm: bool) -> dict[str, Any]:
    """The sandbox container: the runner at requests = limits; a warm one keeps stdin open for its payload."""
    container: dict[str, Any] = {
        "name": "sandbox",
        "image": cls.image,
        "imagePullPolicy": "IfNotPresent",
        "command": list(cls.command or RUNNER_COMMAND),
        "env": env,
        "workingDir": "/tmp",
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "securityContext": _container_security_context(),
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "volumeMounts": mounts,
    }
    if warm:
        container |= {"stdin": True, "stdinOnce": True, "tty": False}
    return container


def _pod_spec(cls: ExecutionClassSpec, resources: dict[str, str], env: list[dict[str, str]],
              payload: dict[str, Any] | None, deadline: int | None) -> dict[str, Any]:
    """The hardened pod spec (Pod Security Standard `restricted`) shared by cold and warm pods.

    A warm pod (`payload` None) has no payload volume and keeps its stdin open for the one payload it
    will be handed (`stdinOnce`: closed by the runtime when that attach ends), and no deadline until
    it is claimed.
    """
    mounts, volumes = _volumes(payload)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        "securityContext": _pod_security_context(),
        "containers": [_container(cls, resources, _env(cls, env), mounts, warm=payload is None)],
        "volumes": volumes,
    }
    if deadline is not None:
        pod_spec["activeDeadlineSeconds"] = deadline
    if cls.runtime_class_name:
        pod_spec["runtimeClassName"] = cls.runtime_class_name
    return pod_spec


def build_pod(ref: ExecutionRef, spec: ExecutionSpec, cls: ExecutionClassSpec, attempt: int) -> dict[str, Any]:
    """The hardened sandbox pod (Pod Security Standard `restricted`) for one attempt."""
    resources = effective_resources(spec, cls)
    payload, annotations = _payload_volume(ref, spec)
    env = [
        *_base_env(spec.timeout_seconds),
        # Lets code make its side effects idempotent across retries.
        {"name": "SANDBOX_ATTEMPT", "value": str(attempt)},
        {"name": "SANDBOX_EXECUTION", "value": ref.name},
        {"name": "SANDBOX_CORRELATION_ID", "value": ref.correlation_id},
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(ref, attempt),
            "namespace": ref.namespace,
            "labels": labels_for(ref, spec.execution_class_name, attempt, cls.allow_network),
            "annotations": annotations | {ANNOTATION_CORRELATION_ID: ref.correlation_id},
            "ownerReferences": [owner_reference(ref)],
        },
        "spec": _pod_spec(cls, resources, env, payload, active_deadline_seconds(spec, cls)),
    }


def build_warm_pod_spec(cls: ExecutionClassSpec, warm_env: list[dict[str, str]]) -> dict[str, Any]:
    """The spec of a warm pool's pod: the class's pod at its default resources, waiting on stdin."""
    resources = effective_resources(ExecutionSpec(code="#"), cls)
    return _pod_spec(cls, resources, [*_base_env(cls.max_timeout_seconds), *warm_env], None, None)


def deny_all_network_policy(namespace: str) -> dict[str, Any]:
    """One per namespace: sandbox pods labelled `sandbox.dev/network=deny` get no ingress and no egress."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": NETWORK_POLICY_NAME,
            "namespace": namespace,
            "labels": {LABEL_MANAGED_BY: MANAGED_BY},
        },
        "spec": {
            "podSelector": {"matchLabels": {NETWORK_DENY_LABEL: "deny"}},
            "policyTypes": ["Ingress", "Egress"],
        },
    }
