"""Turning a pod spec into what a container needs: environment variables and materialised volumes.

The API objects a pod refers to (ConfigMaps, Secrets, NetworkPolicies) come through the `Lookups`
protocol, so this module is testable without an API server.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .node_sched import match_label_selector, parse_quantity


class Lookups(Protocol):
    """Read access to the API objects a pod refers to; None means "not found"."""

    async def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def list_network_policies(self, namespace: str) -> list[dict[str, Any]]: ...


class StaticLookups:
    """Lookups backed by dicts keyed `(namespace, name)`; for tests and offline use."""

    def __init__(
        self,
        configmaps: Mapping[tuple[str, str], dict[str, Any]] | None = None,
        secrets: Mapping[tuple[str, str], dict[str, Any]] | None = None,
        network_policies: Mapping[str, list[dict[str, Any]]] | None = None,
    ) -> None:
        self.configmaps = dict(configmaps or {})
        self.secrets = dict(secrets or {})
        self.network_policies = dict(network_policies or {})

    async def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.configmaps.get((namespace, name))

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.secrets.get((namespace, name))

    async def list_network_policies(self, namespace: str) -> list[dict[str, Any]]:
        return list(self.network_policies.get(namespace, []))


class ContainerConfigError(Exception):
    """The kubelet's `CreateContainerConfigError`: a referenced object or key is missing."""


@dataclass
class Mount:
    """One bind mount for the sandbox: host path -> container path."""

    source: Path
    target: str
    read_only: bool


def egress_denied(pod: dict[str, Any], policies: list[dict[str, Any]]) -> bool:
    """True when some NetworkPolicy selects the pod, governs Egress and allows no egress at all.

    Only the all-or-nothing case is emulated: a policy with any egress rule leaves the network on.
    """
    labels = (pod.get("metadata") or {}).get("labels") or {}
    selecting = [
        p
        for p in policies
        if match_label_selector((p.get("spec") or {}).get("podSelector") or {}, labels) and "Egress" in _policy_types(p)
    ]
    return bool(selecting) and all(not (p.get("spec") or {}).get("egress") for p in selecting)


def _policy_types(policy: dict[str, Any]) -> list[str]:
    spec = policy.get("spec") or {}
    types = spec.get("policyTypes")
    if types:
        return list(types)
    return ["Ingress", "Egress"] if spec.get("egress") is not None else ["Ingress"]


# --- field references -------------------------------------------------------------------------------

_SUBSCRIPT_RE = re.compile(r"^metadata\.(labels|annotations)\['(.*)'\]$")


def _quote_go(value: str) -> str:
    """strconv.Quote-like quoting, as the downward API formats label/annotation maps."""
    return json.dumps(value, ensure_ascii=False)


def field_ref_value(pod: dict[str, Any], field_path: str, host_ip: str) -> str:
    """Resolve a downward-API `fieldRef.fieldPath` against the pod."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    match = _SUBSCRIPT_RE.match(field_path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    simple: dict[str, Any] = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
        "status.podIP": host_ip,
        "status.podIPs": host_ip,
    }
    if field_path in simple:
        return str(simple[field_path])
    if field_path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(field_path.split(".")[1]) or {}
        return "\n".join(f"{k}={_quote_go(str(v))}" for k, v in sorted(items.items()))
    raise ContainerConfigError(f"unsupported fieldPath: {field_path}")


def resource_field_value(pod: dict[str, Any], container_name: str | None, ref: dict[str, Any]) -> str:
    """Resolve a `resourceFieldRef` (limits/requests of a container) with its divisor."""
    name = ref.get("containerName") or container_name
    containers = [*(pod["spec"].get("containers") or []), *(pod["spec"].get("initContainers") or [])]
    container = next((c for c in containers if c.get("name") == name), None)
    if container is None:
        raise ContainerConfigError(f"container {name} not found")
    kind, _, resource = str(ref.get("resource", "")).partition(".")
    resources = container.get("resources") or {}
    value = (resources.get(kind) or {}).get(resource)
    if value is None and kind == "requests":
        value = (resources.get("limits") or {}).get(resource)
    if value is None:
        # Unset limits report the node's allocatable, as the kubelet does.
        value = {"cpu": "2", "memory": "8Gi", "ephemeral-storage": "100Gi"}.get(resource, "0")
    divisor = parse_quantity(ref.get("divisor") or "1")
    quotient = parse_quantity(value) / divisor
    integral = quotient.to_integral_value(rounding="ROUND_CEILING")
    return str(int(integral))


# --- environment ------------------------------------------------------------------------------------

_EXPAND_RE = re.compile(r"\$(\$|\(([A-Za-z_][A-Za-z0-9_.\-]*)\))")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: defined names are replaced, `$$` escapes, the rest stays as is."""

    def repl(match: re.Match[str]) -> str:
        if match.group(1) == "$":
            return "$"
        name = match.group(2)
        return env[name] if name in env else match.group(0)

    return _EXPAND_RE.sub(repl, value)


def _secret_data(secret: dict[str, Any]) -> dict[str, bytes]:
    out = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    out.update({k: str(v).encode() for k, v in (secret.get("stringData") or {}).items()})
    return out


def _configmap_data(cm: dict[str, Any]) -> dict[str, bytes]:
    out = {k: str(v).encode() for k, v in (cm.get("data") or {}).items()}
    out.update({k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()})
    return out


async def _referenced_data(
    lookups: Lookups, namespace: str, ref: dict[str, Any], is_configmap: bool
) -> dict[str, bytes] | None:
    """The data of the ConfigMap or Secret `ref` names; None when it is missing but optional."""
    name = ref.get("name", "")
    obj = await (lookups.get_configmap if is_configmap else lookups.get_secret)(namespace, name)
    if obj is None:
        if ref.get("optional"):
            return None
        raise ContainerConfigError(f'{"configmap" if is_configmap else "secret"} "{name}" not found')
    return _configmap_data(obj) if is_configmap else _secret_data(obj)


async def container_env(
    pod: dict[str, Any],
    container: dict[str, Any],
    lookups: Lookups,
    base: Mapping[str, str],
    host_ip: str,
) -> dict[str, str]:
    """The container's environment: `base` (image + runtime), then envFrom, then env, in order."""
    namespace = pod["metadata"].get("namespace", "default")
    env: dict[str, str] = dict(base)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix") or ""
        if "configMapRef" in source or "secretRef" in source:
            is_cm = "configMapRef" in source
            data = await _referenced_data(lookups, namespace, source["configMapRef" if is_cm else "secretRef"], is_cm)
            for key, raw in (data or {}).items():
                env[prefix + key] = raw.decode(errors="replace")
    for var in container.get("env") or []:
        name = var.get("name", "")
        if "valueFrom" not in var:
            env[name] = expand(str(var.get("value", "")), env)
            continue
        source = var["valueFrom"] or {}
        if "fieldRef" in source:
            env[name] = field_ref_value(pod, source["fieldRef"].get("fieldPath", ""), host_ip)
        elif "resourceFieldRef" in source:
            env[name] = resource_field_value(pod, container.get("name"), source["resourceFieldRef"])
        elif "configMapKeyRef" in source or "secretKeyRef" in source:
            is_cm = "configMapKeyRef" in source
            ref = source["configMapKeyRef" if is_cm else "secretKeyRef"]
            ref_name = ref.get("name", "")
            data = await _referenced_data(lookups, namespace, ref, is_cm)
            if data is None:
                continue
            if ref.get("key") not in data:
                if ref.get("optional"):
                    continue
                raise ContainerConfigError(
                    f"couldn't find key {ref.get('key')} in {'ConfigMap' if is_cm else 'Secret'} "
                    f"{namespace}/{ref_name}"
                )
            env[name] = data[ref["key"]].decode(errors="replace")
    return env


# --- volumes ----------------------------------------------------------------------------------------


def _write_file(root: Path, rel: str, content: bytes, mode: int | None) -> None:
    rel_path = Path(rel)
    if rel_path.is_absolute() or ".." in rel_path.parts:
        raise ContainerConfigError(f"invalid volume item path {rel!r}")
    target = root / rel_path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    os.chmod(target, mode if mode is not None else 0o644)


def _project_keys(
    data: dict[str, bytes],
    items: list[dict[str, Any]] | None,
    what: str,
    optional: bool,
) -> list[tuple[str, bytes, int | None]]:
    if not items:
        return [(k, v, None) for k, v in data.items()]
    out: list[tuple[str, bytes, int | None]] = []
    for item in items:
        key = item.get("key", "")
        if key not in data:
            if optional:
                continue
            raise ContainerConfigError(f"{what} references non-existent config key: {key}")
        out.append((item.get("path") or key, data[key], item.get("mode")))
    return out


async def _fill_source(
    pod: dict[str, Any],
    source: dict[str, Any],
    kind: str,
    root: Path,
    lookups: Lookups,
    host_ip: str,
    default_mode: int | None,
) -> None:
    namespace = pod["metadata"].get("namespace", "default")
    if kind == "configMap":
        name = source.get("name", "")
        cm = await lookups.get_configmap(namespace, name)
        if cm is None:
            if source.get("optional"):
                return
            raise ContainerConfigError(f'configmap "{name}" not found')
        files = _project_keys(_configmap_data(cm), source.get("items"), "configmap", bool(source.get("optional")))
    elif kind == "secret":
        name = source.get("secretName") or source.get("name", "")
        secret = await lookups.get_secret(namespace, name)
        if secret is None:
            if source.get("optional"):
                return
            raise ContainerConfigError(f'secret "{name}" not found')
        files = _project_keys(_secret_data(secret), source.get("items"), "secret", bool(source.get("optional")))
    elif kind == "downwardAPI":
        files = []
        for item in source.get("items") or []:
            if "fieldRef" in item:
                value = field_ref_value(pod, item["fieldRef"].get("fieldPath", ""), host_ip)
            elif "resourceFieldRef" in item:
                value = resource_field_value(pod, None, item["resourceFieldRef"])
            else:
                continue
            files.append((item.get("path", ""), value.encode(), item.get("mode")))
    else:
        return
    mode = source.get("defaultMode", default_mode)
    for rel, content, item_mode in files:
        _write_file(root, rel, content, item_mode if item_mode is not None else mode)


async def materialize_volumes(pod: dict[str, Any], pod_dir: Path, lookups: Lookups, host_ip: str) -> dict[str, Path]:
    """Create each pod volume under `pod_dir/volumes/<name>` and return name -> host path.

    emptyDir is a plain directory (its `sizeLimit` is not enforced); configMap, secret, downwardAPI and
    projected are written out once at start (no live updates); hostPath binds the host path itself.
    Raises ContainerConfigError for a missing object or key and for unsupported volume types.
    """
    paths: dict[str, Path] = {}
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        name = volume.get("name", "")
        root = pod_dir / "volumes" / name
        if "hostPath" in volume:
            paths[name] = Path(volume["hostPath"].get("path", "/"))
            continue
        if "emptyDir" in volume:
            root.mkdir(parents=True, exist_ok=True)
            os.chmod(root, 0o777)
            paths[name] = root
            continue
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        for kind in ("configMap", "secret", "downwardAPI"):
            if kind in volume:
                await _fill_source(pod, volume[kind], kind, root, lookups, host_ip, None)
                break
        else:
            if "projected" in volume:
                projected = volume["projected"] or {}
                for source in projected.get("sources") or []:
                    for kind in ("configMap", "secret", "downwardAPI"):
                        if kind in source:
                            await _fill_source(
                                pod, source[kind], kind, root, lookups, host_ip, projected.get("defaultMode")
                            )
            else:
                kinds = sorted(k for k in volume if k != "name")
                raise ContainerConfigError(f"volume {name!r}: unsupported volume type {', '.join(kinds)}")
        paths[name] = root
    return paths


def container_mounts(container: dict[str, Any], volumes: dict[str, Path]) -> list[Mount]:
    """The container's volumeMounts as bind mounts, parents before children."""
    mounts: list[Mount] = []
    for vm in container.get("volumeMounts") or []:
        name = vm.get("name", "")
        if name not in volumes:
            raise ContainerConfigError(f'volume "{name}" not found in pod spec')
        source = volumes[name]
        sub = vm.get("subPath") or ""
        if sub:
            sub_path = Path(sub)
            if sub_path.is_absolute() or ".." in sub_path.parts:
                raise ContainerConfigError(f"invalid subPath {sub!r}")
            source = source / sub_path
            if not source.exists():
                source.mkdir(parents=True, exist_ok=True)
        mounts.append(Mount(source=source, target=vm.get("mountPath", ""), read_only=bool(vm.get("readOnly"))))
    mounts.sort(key=lambda m: len(Path(m.target).parts))
    return mounts
