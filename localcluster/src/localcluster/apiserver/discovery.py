"""Discovery documents (`/api`, `/apis`, group and group-version resource lists), from the registry.

Aggregated discovery is not offered: clients asking for it get the plain form (with a plain
`application/json` content type), which kubectl and client-go accept as a fallback.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from localcluster.apiserver.resources import Registry, ResourceInfo

_SUB_VERBS: dict[str, tuple[str, list[str], str, str]] = {
    # subresource -> (kind, verbs, group, version) ; empty group/version = same as parent
    "status": ("", ["get", "patch", "update"], "", ""),
    "log": ("Pod", ["get"], "", ""),
    "attach": ("PodAttachOptions", ["create", "get"], "", ""),
    "binding": ("Binding", ["create"], "", ""),
    "eviction": ("Eviction", ["create"], "policy", "v1"),
    "ephemeralcontainers": ("", ["get", "patch", "update"], "", ""),
    "scale": ("Scale", ["get", "patch", "update"], "autoscaling", "v1"),
    "finalize": ("", ["update"], "", ""),
    "token": ("TokenRequest", ["create"], "authentication.k8s.io", "v1"),
    "proxy": ("", ["create", "delete", "get", "patch", "update"], "", ""),
}


def _storage_hash(info: ResourceInfo) -> str:
    """StorageVersionHash: base64 of the first 8 bytes of sha256("group/storageVersion/Kind")."""
    digest = hashlib.sha256(f"{info.group}/{info.storage_version}/{info.kind}".encode()).digest()
    return base64.b64encode(digest[:8]).decode()


def resource_entries(info: ResourceInfo) -> list[dict[str, Any]]:
    main: dict[str, Any] = {
        "name": info.plural,
        "singularName": info.singular,
        "namespaced": info.namespaced,
        "kind": info.kind,
        "verbs": info.verbs,
        "storageVersionHash": _storage_hash(info),
    }
    if info.short_names:
        main["shortNames"] = info.short_names
    if info.categories:
        main["categories"] = info.categories
    out = [main]
    for sub in info.subresources:
        kind, verbs, group, version = _SUB_VERBS.get(sub, ("", ["get"], "", ""))
        entry: dict[str, Any] = {"name": f"{info.plural}/{sub}", "singularName": "", "namespaced": info.namespaced,
                                 "kind": kind or info.kind, "verbs": verbs}
        if group:
            entry["group"] = group
            entry["version"] = version
        out.append(entry)
    return out


def resource_list(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    infos = registry.in_group_version(group, version)
    if not infos:
        return None
    resources: list[dict[str, Any]] = []
    for info in sorted(infos, key=lambda i: i.plural):
        resources.extend(resource_entries(info))
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources}


def _group(name: str, versions: list[str]) -> dict[str, Any]:
    vs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": vs, "preferredVersion": vs[0]}


def serve(registry: Registry, path: str) -> dict[str, Any] | None:
    """The discovery document for `path`, or None if it is not a discovery path."""
    parts = [p for p in path.split("/") if p]
    if parts == ["api"]:
        return {"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}
    if parts == ["api", "v1"]:
        return resource_list(registry, "", "v1")
    if parts == ["apis"]:
        groups = registry.groups()
        return {"kind": "APIGroupList", "apiVersion": "v1",
                "groups": [_group(g, vs) for g, vs in sorted(groups.items())]}
    if len(parts) == 2 and parts[0] == "apis":
        versions = registry.groups().get(parts[1])
        if not versions:
            return None
        return {"kind": "APIGroup", "apiVersion": "v1", **_group(parts[1], versions)}
    if len(parts) == 3 and parts[0] == "apis":
        return resource_list(registry, parts[1], parts[2])
    return None
