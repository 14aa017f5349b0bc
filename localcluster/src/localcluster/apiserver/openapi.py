"""OpenAPI v3 documents: enough for `kubectl explain`, `kubectl apply` and server-side field validation;
an OpenAPI v2 document without paths or definitions, which kubectl reads before applying a `kind: List`.

Custom resources get their CRD schema (with `apiVersion`, `kind`, `metadata` added as the real
server does). Built-in kinds get a stub schema and PATCH operations without the strategic merge
content type, which makes kubectl compute strategic patches from its compiled-in types instead.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from localcluster.apiserver.resources import Registry, ResourceInfo

OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
def _prop(typ: str, desc: str, **extra: Any) -> dict[str, Any]:
    return {"type": typ, "description": desc, **extra}


_META_SCHEMA: dict[str, Any] = {
    "description": "ObjectMeta is metadata that all persisted resources must have, which includes all objects "
                   "users must create.",
    "type": "object",
    "properties": {
        "name": _prop("string", "Name must be unique within a namespace."),
        "generateName": _prop("string", "GenerateName is an optional prefix, used by the server, to generate a "
                                        "unique name."),
        "namespace": _prop("string", "Namespace defines the space within which each name must be unique."),
        "labels": _prop("object", "Map of string keys and values that can be used to organize and categorize "
                                  "objects.", additionalProperties={"type": "string", "default": ""}),
        "annotations": _prop("object", "Annotations is an unstructured key value map stored with a resource.",
                             additionalProperties={"type": "string", "default": ""}),
        "uid": _prop("string", "UID is the unique in time and space value for this object."),
        "resourceVersion": _prop("string", "An opaque value that represents the internal version of this object."),
        "generation": _prop("integer", "A sequence number representing a specific generation of the desired "
                                       "state.", format="int64"),
        "creationTimestamp": _prop("string", "CreationTimestamp is a timestamp representing the server time when "
                                             "this object was created.", format="date-time"),
        "deletionTimestamp": _prop("string", "DeletionTimestamp is RFC 3339 date and time at which this resource "
                                             "will be deleted.", format="date-time"),
        "deletionGracePeriodSeconds": _prop("integer", "Number of seconds allowed for this object to gracefully "
                                                       "terminate.", format="int64"),
        "finalizers": _prop("array", "Must be empty before the object is deleted from the registry.",
                            items={"type": "string", "default": ""}, **{
                                "x-kubernetes-list-type": "set", "x-kubernetes-patch-strategy": "merge"}),
        "ownerReferences": _prop("array", "List of objects depended by this object.", items={"type": "object"},
                                 **{"x-kubernetes-patch-merge-key": "uid", "x-kubernetes-patch-strategy": "merge"}),
    },
}

_QUERY_PARAMS = ["dryRun", "fieldManager", "fieldValidation", "force", "pretty"]


def schema_name(info: ResourceInfo) -> str:
    if not info.group:
        return f"io.k8s.api.core.{info.version}.{info.kind}"
    if info.custom:
        rev = ".".join(reversed(info.group.split(".")))
        return f"{rev}.{info.version}.{info.kind}"
    first = info.group.split(".")[0]
    return f"io.k8s.api.{first}.{info.version}.{info.kind}"


def _gvk(info: ResourceInfo) -> dict[str, str]:
    return {"group": info.group, "version": info.version, "kind": info.kind}


def resource_schema(info: ResourceInfo) -> dict[str, Any]:
    if info.custom and info.schema:
        schema = copy.deepcopy(info.schema)
    else:
        schema = {"type": "object", "description": f"{info.kind} (schema not published by this server).",
                  "x-kubernetes-preserve-unknown-fields": True}
    props = schema.setdefault("properties", {})
    props.setdefault("apiVersion", {"type": "string", "description": "APIVersion defines the versioned schema of "
                                                                     "this representation of an object."})
    props.setdefault("kind", {"type": "string", "description": "Kind is a string value representing the REST "
                                                              "resource this object represents."})
    props["metadata"] = {"allOf": [{"$ref": f"#/components/schemas/{OBJECT_META}"}], "default": {},
                         "description": "Standard object's metadata."}
    schema["x-kubernetes-group-version-kind"] = [_gvk(info)]
    return schema


def _operation(info: ResourceInfo, op: str, content_types: list[str] | None = None) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema_name(info)}"}
    out: dict[str, Any] = {
        "operationId": f"{op}{info.kind}",
        "parameters": [{"name": p, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
                       for p in _QUERY_PARAMS],
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": ref}}}},
        "x-kubernetes-action": op,
        "x-kubernetes-group-version-kind": _gvk(info),
    }
    if content_types:
        out["requestBody"] = {"content": {ct: {"schema": {"type": "object"}} for ct in content_types},
                              "required": True}
    return out


def gv_document(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    infos = registry.in_group_version(group, version)
    if not infos:
        return None
    prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {OBJECT_META: _META_SCHEMA}
    for info in infos:
        schemas[schema_name(info)] = resource_schema(info)
        base = f"{prefix}/namespaces/{{namespace}}/{info.plural}" if info.namespaced else f"{prefix}/{info.plural}"
        patch_types = ["application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"]
        paths[base] = {"get": _operation(info, "list"), "post": _operation(info, "post", ["*/*"])}
        paths[f"{base}/{{name}}"] = {
            "get": _operation(info, "get"),
            "put": _operation(info, "put", ["*/*"]),
            "patch": _operation(info, "patch", patch_types),
            "delete": _operation(info, "delete"),
        }
        for sub in info.subresources:
            if sub == "status":
                paths[f"{base}/{{name}}/status"] = {"get": _operation(info, "get"),
                                                    "patch": _operation(info, "patch", patch_types)}
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "unversioned"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _hash(doc: Any) -> str:
    return hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32].upper()


def v2_document(git_version: str) -> dict[str, Any]:
    """The OpenAPI v2 document: served because kubectl reads it (to validate the items of a `kind: List`, for
    one); its paths and definitions are empty, so kubectl validates those items no further (it skips kinds the
    document does not define) and takes strategic merge keys from its compiled-in types. Every schema is in
    the v3 documents."""
    return {"swagger": "2.0", "info": {"title": "Kubernetes", "version": git_version}, "paths": {},
            "definitions": {}}


def serve(registry: Registry, path: str, query: Any) -> dict[str, Any] | None:
    parts = [p for p in path.split("/") if p]
    if parts == ["openapi", "v3"]:
        out: dict[str, Any] = {}
        gvs = {(i.group, i.version) for i in registry.all()}
        for group, version in sorted(gvs):
            key = f"apis/{group}/{version}" if group else f"api/{version}"
            doc = gv_document(registry, group, version)
            out[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={_hash(doc)}"}
        return {"paths": out}
    if len(parts) >= 4 and parts[:2] == ["openapi", "v3"]:
        if parts[2] == "api" and len(parts) == 4:
            return gv_document(registry, "", parts[3])
        if parts[2] == "apis" and len(parts) == 5:
            return gv_document(registry, parts[3], parts[4])
    return None
