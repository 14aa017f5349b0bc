"""The scale subresource of custom resources (`kubectl scale`, an HPA, KEDA): an autoscaling/v1 Scale.

The CRD names where the replicas live (`specReplicasPath`, `statusReplicasPath`, `labelSelectorPath`).
A read builds the Scale from the object; a write (merge or JSON patch, or a PUT of a Scale) sets only
the spec's replicas, through the object's own update, so its schema (bounds) and resourceVersion
precondition apply as on the object.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from localcluster.apiserver.patch import json_copy, json_patch, merge_patch
from localcluster.apiserver.resources import ResourceInfo
from localcluster.apiserver.status import ApiError

if TYPE_CHECKING:
    from localcluster.apiserver.server import ApiServer


def _get(obj: Any, path: str | None) -> Any:
    for part in (path or "").strip(".").split("."):
        if not part:
            return None
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def _set(obj: dict[str, Any], path: str, value: Any) -> None:
    parts = path.strip(".").split(".")
    for part in parts[:-1]:
        obj = obj.setdefault(part, {})
    obj[parts[-1]] = value


def to_scale(info: ResourceInfo, obj: dict[str, Any]) -> dict[str, Any]:
    paths = info.scale or {}
    meta = obj["metadata"]
    status: dict[str, Any] = {"replicas": int(_get(obj, paths.get("statusReplicasPath")) or 0)}
    selector = _get(obj, paths.get("labelSelectorPath"))
    if selector:
        status["selector"] = selector
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                     if k in meta},
        "spec": {"replicas": int(_get(obj, paths.get("specReplicasPath")) or 0)},
        "status": status,
    }


async def serve_scale(server: ApiServer, request: web.Request, info: ResourceInfo, ns: str, name: str,
                      verb: str) -> web.Response:
    obj = server._must_get(info, ns, name)
    scale = to_scale(info, obj)
    if verb == "get":
        return web.json_response(scale)
    body = await server._read_body(request)
    if verb == "patch":
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
        if ctype == "application/json-patch+json":
            wanted = json_patch(json_copy(scale), body)
        elif ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            wanted = merge_patch(json_copy(scale), body)
        else:
            raise ApiError(415, f"the body of the request was in an unknown format - accepted media types "
                                f"include: application/json-patch+json, application/merge-patch+json, "
                                f"application/strategic-merge-patch+json (got {ctype})", "UnsupportedMediaType")
    elif verb == "update":
        wanted = body
    else:
        raise ApiError(405, "the server does not allow this method on the requested resource", "MethodNotAllowed")
    if not isinstance(wanted, dict):
        raise ApiError(400, "the body of the request was empty or not an object", "BadRequest")
    replicas = (wanted.get("spec") or {}).get("replicas")
    if not isinstance(replicas, int) or isinstance(replicas, bool):
        raise ApiError(422, f'Scale.autoscaling "{name}" is invalid: spec.replicas: Invalid value: '
                            f"{json.dumps(replicas)}: must be an integer", "Invalid")
    rv = (wanted.get("metadata") or {}).get("resourceVersion")
    new = json_copy(obj)
    if rv:
        new["metadata"]["resourceVersion"] = rv
    _set(new, str((info.scale or {}).get("specReplicasPath") or ".spec.replicas"), replicas)
    updated = server.update_object(info, ns, name, new)
    return web.json_response(to_scale(info, updated))
