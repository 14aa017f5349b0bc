"""The resource registry: which kinds are served, under which group/version/plural, and how.

Built-in kinds are declared here once; CustomResourceDefinitions add entries at run time.
Discovery, routing, OpenAPI and Table output are all derived from these entries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
#: the order apiextensions-apiserver lists a custom resource's verbs in discovery
CUSTOM_VERBS = ["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"]


@dataclass
class ResourceInfo:
    """One served resource (one group/version/plural)."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    verbs: list[str] = field(default_factory=lambda: list(ALL_VERBS))
    subresources: list[str] = field(default_factory=list)
    has_generation: bool = False
    # For custom resources: the version's openAPIV3Schema and printer columns.
    schema: dict[str, Any] | None = None
    printer_columns: list[dict[str, Any]] = field(default_factory=list)
    selectable_fields: list[dict[str, Any]] = field(default_factory=list)
    custom: bool = False
    storage_version: str = ""
    served_versions: list[str] = field(default_factory=list)
    # The storage version's schema when it differs (an object is stored, so also pruned, through it).
    storage_schema: dict[str, Any] | None = None
    #: A custom resource's scale subresource: specReplicasPath, statusReplicasPath, labelSelectorPath.
    scale: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if not self.singular:
            self.singular = self.kind.lower()
        if not self.storage_version:
            self.storage_version = self.version

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        """`pods` or `executions.sandbox.dev`: the name used in error messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def kind_group(self) -> str:
        """`Pod` or `Execution.sandbox.dev`: the qualified kind used in Invalid messages."""
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def store_key(self) -> tuple[str, str]:
        """Objects are stored once per group/plural, whatever version they are read through."""
        return (self.group, self.plural)

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources


def _r(
    group: str,
    version: str,
    plural: str,
    kind: str,
    namespaced: bool = True,
    short: list[str] | None = None,
    sub: list[str] | None = None,
    cats: list[str] | None = None,
    gen: bool = False,
    verbs: list[str] | None = None,
) -> ResourceInfo:
    return ResourceInfo(
        group=group,
        version=version,
        plural=plural,
        kind=kind,
        namespaced=namespaced,
        short_names=short or [],
        subresources=sub or [],
        categories=cats or [],
        has_generation=gen,
        verbs=verbs or list(ALL_VERBS),
    )


def builtin_resources() -> list[ResourceInfo]:
    """The built-in kinds this emulator serves (stored as given; no controllers beyond GC)."""
    return [
        _r("", "v1", "namespaces", "Namespace", False, ["ns"], ["status", "finalize"],
           verbs=["create", "delete", "get", "list", "patch", "update", "watch"]),
        _r("", "v1", "pods", "Pod", True, ["po"],
           ["status", "log", "binding", "eviction", "ephemeralcontainers", "attach"], ["all"], gen=True),
        _r("", "v1", "configmaps", "ConfigMap", True, ["cm"]),
        _r("", "v1", "secrets", "Secret", True),
        _r("", "v1", "events", "Event", True, ["ev"]),
        _r("", "v1", "serviceaccounts", "ServiceAccount", True, ["sa"], ["token"]),
        _r("", "v1", "services", "Service", True, ["svc"], ["status", "proxy"], ["all"]),
        _r("", "v1", "endpoints", "Endpoints", True, ["ep"]),
        _r("", "v1", "nodes", "Node", False, ["no"], ["status", "proxy"]),
        _r("", "v1", "resourcequotas", "ResourceQuota", True, ["quota"], ["status"]),
        _r("", "v1", "limitranges", "LimitRange", True, ["limits"]),
        _r("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True, ["pvc"], ["status"]),
        _r("", "v1", "persistentvolumes", "PersistentVolume", False, ["pv"], ["status"]),
        _r("events.k8s.io", "v1", "events", "Event", True, ["ev"]),
        _r("apps", "v1", "deployments", "Deployment", True, ["deploy"], ["status", "scale"], ["all"], gen=True),
        _r("apps", "v1", "replicasets", "ReplicaSet", True, ["rs"], ["status", "scale"], ["all"], gen=True),
        _r("apps", "v1", "statefulsets", "StatefulSet", True, ["sts"], ["status", "scale"], ["all"], gen=True),
        _r("apps", "v1", "daemonsets", "DaemonSet", True, ["ds"], ["status"], ["all"], gen=True),
        _r("batch", "v1", "jobs", "Job", True, [], ["status"], ["all"], gen=True),
        _r("batch", "v1", "cronjobs", "CronJob", True, ["cj"], ["status"], ["all"], gen=True),
        _r("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True, ["netpol"], gen=True),
        _r("networking.k8s.io", "v1", "ingresses", "Ingress", True, ["ing"], ["status"], gen=True),
        _r("coordination.k8s.io", "v1", "leases", "Lease", True),
        _r("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
        _r("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
        _r("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
        _r("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
        _r("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True, ["pdb"], ["status"], gen=True),
        _r("scheduling.k8s.io", "v1", "priorityclasses", "PriorityClass", False, ["pc"]),
        _r("node.k8s.io", "v1", "runtimeclasses", "RuntimeClass", False),
        _r("storage.k8s.io", "v1", "storageclasses", "StorageClass", False, ["sc"]),
        _r("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations",
           "ValidatingWebhookConfiguration", False),
        _r("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations",
           "MutatingWebhookConfiguration", False),
        # Access reviews: there is no authorization here, so every review answers "allowed".
        _r("authorization.k8s.io", "v1", "selfsubjectaccessreviews", "SelfSubjectAccessReview", False,
           verbs=["create"]),
        _r("authorization.k8s.io", "v1", "subjectaccessreviews", "SubjectAccessReview", False, verbs=["create"]),
        _r("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False,
           ["crd", "crds"], ["status"], ["api-extensions"], gen=True),
    ]


_VERSION_RE = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def version_priority(version: str) -> tuple[int, int, int, str]:
    """Sort key putting the preferred version first: GA > beta > alpha, higher numbers first."""
    m = _VERSION_RE.match(version)
    if not m:
        return (3, 0, 0, version)
    major, stage, minor = int(m.group(1)), m.group(2), int(m.group(3) or 0)
    rank = {None: 0, "beta": 1, "alpha": 2}[stage]
    return (rank, -major, -minor, version)


class Registry:
    """All served resources, looked up by group/version/plural, by kind, or by group/plural."""

    def __init__(self) -> None:
        self._by_gvr: dict[tuple[str, str, str], ResourceInfo] = {}
        for info in builtin_resources():
            self.add(info)

    def add(self, info: ResourceInfo) -> None:
        self._by_gvr[(info.group, info.version, info.plural)] = info

    def remove_group_resource(self, group: str, plural: str) -> None:
        for key in [k for k in self._by_gvr if k[0] == group and k[2] == plural]:
            del self._by_gvr[key]

    def get(self, group: str, version: str, plural: str) -> ResourceInfo | None:
        return self._by_gvr.get((group, version, plural))

    def all(self) -> list[ResourceInfo]:
        return list(self._by_gvr.values())

    def by_kind(self, api_version: str, kind: str) -> ResourceInfo | None:
        group, _, version = api_version.rpartition("/")
        for info in self._by_gvr.values():
            if info.group == group and info.version == version and info.kind == kind:
                return info
        return None

    def any_version(self, group: str, plural: str) -> ResourceInfo | None:
        """The storage-version entry of a group/plural (used for GC and namespace cleanup)."""
        found = None
        for info in self._by_gvr.values():
            if info.group == group and info.plural == plural:
                if info.version == info.storage_version:
                    return info
                found = info
        return found

    def groups(self) -> dict[str, list[str]]:
        """group -> served versions, preferred first (Kubernetes version priority), excluding core."""
        out: dict[str, list[str]] = {}
        for info in self._by_gvr.values():
            if info.group:
                versions = out.setdefault(info.group, [])
                if info.version not in versions:
                    versions.append(info.version)
        return {g: sorted(vs, key=version_priority) for g, vs in out.items()}

    def in_group_version(self, group: str, version: str) -> list[ResourceInfo]:
        return [i for i in self._by_gvr.values() if i.group == group and i.version == version]


def resources_from_crd(crd: dict[str, Any]) -> list[ResourceInfo]:
    """Turn an apiextensions.k8s.io/v1 CRD into one ResourceInfo per served version."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group = spec.get("group", "")
    versions = spec.get("versions") or []
    storage = next((v["name"] for v in versions if v.get("storage")), versions[0]["name"] if versions else "")
    served = [v["name"] for v in versions if v.get("served", True)]
    schemas = {v["name"]: (v.get("schema") or spec.get("validation") or {}).get("openAPIV3Schema") for v in versions}
    out = []
    for ver in versions:
        if not ver.get("served", True):
            continue
        subs = []
        subres = ver.get("subresources") or spec.get("subresources") or {}
        if "status" in subres:
            subs.append("status")
        if "scale" in subres:
            subs.append("scale")
        schema = (ver.get("schema") or spec.get("validation") or {}).get("openAPIV3Schema")
        out.append(
            ResourceInfo(
                group=group,
                version=ver["name"],
                plural=names.get("plural", ""),
                kind=names.get("kind", ""),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                singular=names.get("singular") or names.get("kind", "").lower(),
                short_names=list(names.get("shortNames") or []),
                categories=list(names.get("categories") or []),
                subresources=subs,
                has_generation=True,
                verbs=list(CUSTOM_VERBS),
                schema=schema,
                printer_columns=list(ver.get("additionalPrinterColumns") or []),
                selectable_fields=list(ver.get("selectableFields") or []),
                custom=True,
                storage_version=storage,
                served_versions=served,
                storage_schema=schemas.get(storage) if schemas.get(storage) != schema else None,
                scale=dict(subres["scale"]) if isinstance(subres.get("scale"), dict) else None,
            )
        )
    return out
