"""The scale subresource of custom resources (`kubectl scale`, an HPA, KEDA): an autoscaling/v1 Scale.

The CRD names where the replicas live (`specReplicasPath`, `statusReplicasPath`, `labelSelectorPath`).
A read builds the Scale from the object; a write (merge or JSON patch, or a PUT of a Scale) sets only
the spec's replicas, through the object's own update, so its schema (bounds), its scale checks and its
resourceVersion precondition apply as on the object.

As the apiextensions server (staging/src/k8s.io/apiextensions-apiserver/pkg/registry/customresource/etcd.go,
`ScaleREST`, and pkg/apiserver/customresource_handler.go, `serveScale`) answers:

- GET when the spec replicas field is absent: 500 `the spec replicas field ".spec.replicas" does not
  exist` (`ScaleREST.Get`); the Scale's `spec.replicas` is left out when 0 (`omitempty`).
- a write that leaves an absent spec replicas field unset: 400 `... cannot be empty`
  (`scaleUpdatedObjectInfo.UpdatedObject`); a PUT without `spec.replicas` sets 0.
- patch types: JSON patch, merge patch and apply, as for the object (strategic merge is 415). Server-side
  apply on the Scale fails with 500: the field manager of a custom resource's scale scope types objects
  with the resource's own schema, which has no Scale (kubernetes/kubernetes#116311).
- field ownership: for the same reason the Scale's field manager fails on every update, so the writer is
  never recorded (kubernetes/kubernetes#131892) and `ScaleHandler.ToParent` reshuffles the replicas'
  owners (managedfields.after_scale_write).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from localcluster.apiserver import decode, managedfields
from localcluster.apiserver.patch import go_json_kind, json_copy, json_patch, merge_patch
from localcluster.apiserver.resources import ResourceInfo
from localcluster.apiserver.status import ApiError

if TYPE_CHECKING:
    from localcluster.apiserver.server import ApiServer

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
#: the patch types a custom resource's handler accepts, for the object and its subresources alike
PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, APPLY_PATCH)
#: ScaleSpec.Replicas when the object has no spec replicas field (the smallest int32)
_UNSET = -2147483648
_INT32 = (-2147483648, 2147483647)


class AccessorError(Exception):
    """What unstructured.NestedInt64 / NestedString return for a value of the wrong type."""


def split_path(path: str) -> list[str]:
    """splitReplicasPath: the path's fields, its leading `.` dropped."""
    return path.removeprefix(".").split(".")


def _json_path(fields: list[str]) -> str:
    return "." + ".".join(fields)


def go_v(v: Any) -> str:
    """fmt %v of a decoded JSON value."""
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        text = repr(v)
        return text[:-2] if text.endswith(".0") else text
    if isinstance(v, Mapping):
        return "map[" + " ".join(f"{k}:{go_v(v[k])}" for k in sorted(v)) + "]"
    if isinstance(v, list):
        return "[" + " ".join(go_v(x) for x in v) + "]"
    return str(v)


def go_t(v: Any) -> str:
    """fmt %T of a decoded JSON value."""
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int64"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, Mapping):
        return "map[string]interface {}"
    return "[]interface {}"


def nested(obj: Any, path: str, want: str) -> tuple[Any, bool]:
    """unstructured.NestedInt64 (want "int64") or NestedString (want "string"): (value, found); a value of
    another type, or a field on the way that is not an object, raises AccessorError."""
    fields = split_path(path)
    val = obj
    for i, f in enumerate(fields):
        if not isinstance(val, Mapping):
            raise AccessorError(f"{_json_path(fields[:i + 1])} accessor error: {go_v(val)} is of the type "
                                f"{go_t(val)}, expected map[string]interface{{}}")
        if f not in val:
            return None, False
        val = val[f]
    ok = (isinstance(val, int) and not isinstance(val, bool)) if want == "int64" else isinstance(val, str)
    if not ok:
        raise AccessorError(f"{_json_path(fields)} accessor error: {go_v(val)} is of the type {go_t(val)}, "
                            f"expected {want}")
    return val, True


def _int32(v: int) -> int:
    """Go's int32(v) of an int64: the low 32 bits, signed."""
    v &= 0xFFFFFFFF
    return v - 0x100000000 if v & 0x80000000 else v


def validate_scale(scale: Mapping[str, Any] | None, obj: Any, spec: bool) -> list[dict[str, str]]:
    """customResourceValidator.ValidateScaleSpec (unless `spec` is False: /status) and ValidateScaleStatus:
    the causes every write of a custom resource with a scale subresource also gets, after its schema's."""
    if not scale:
        return []
    causes: list[dict[str, str]] = []
    paths = [p for p in (scale.get("specReplicasPath") if spec else None, scale.get("statusReplicasPath")) if p]
    for path in paths:
        try:
            value, _ = nested(obj, path, "int64")
        except AccessorError as e:
            causes.append(_invalid(path, 0, str(e)))
            continue
        if value is not None and value < 0:
            causes.append(_invalid(path, value, "should be a non-negative integer"))
        elif value is not None and value > _INT32[1]:
            causes.append(_invalid(path, value, f"should be less than or equal to {_INT32[1]}"))
    selector_path = scale.get("labelSelectorPath")
    if selector_path:
        try:
            nested(obj, selector_path, "string")
        except AccessorError as e:
            causes.append({"reason": "FieldValueInvalid", "field": selector_path,
                           "message": f'Invalid value: "": {e}'})
    return causes


def _invalid(path: str, value: int, detail: str) -> dict[str, str]:
    # field.NewPath(specReplicasPath): the CRD's path as written, leading dot included
    return {"reason": "FieldValueInvalid", "field": path, "message": f"Invalid value: {value}: {detail}"}


def to_scale(info: ResourceInfo, obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """scaleFromCustomResource: the Scale of obj and whether its spec replicas field exists. A field of the
    wrong type is the accessor's error, which the server answers as a 500 without a reason."""
    paths = info.scale or {}
    try:
        spec_replicas, found = nested(obj, paths.get("specReplicasPath") or "", "int64")
        status_replicas, _ = nested(obj, paths.get("statusReplicasPath") or "", "int64")
        selector = ""
        if paths.get("labelSelectorPath"):
            selector, _ = nested(obj, paths["labelSelectorPath"], "string")
    except AccessorError as e:
        raise ApiError(500, str(e), "") from None
    meta = obj["metadata"]
    spec = _int32(spec_replicas or 0)
    status: dict[str, Any] = {"replicas": _int32(status_replicas or 0)}
    if selector:
        status["selector"] = selector
    scale = {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                     if meta.get(k)},
        "spec": {"replicas": spec} if spec else {},  # ScaleSpec.Replicas is omitempty, ScaleStatus's is not
        "status": status,
    }
    return scale, found


def _missing_replicas(path: str) -> ApiError:
    cause = f"the spec replicas field {json.dumps(path)} does not exist"
    return ApiError(500, f"Internal error occurred: {cause}", "InternalError", {"causes": [{"message": cause}]})


_GO_TYPES = {("spec",): ("Scale", "v1.ScaleSpec"), ("status",): ("Scale", "v1.ScaleStatus"),
             ("spec", "replicas"): ("ScaleSpec", "int32"), ("status", "replicas"): ("ScaleStatus", "int32"),
             ("status", "selector"): ("ScaleStatus", "string")}


def decode_error(scale: Any) -> str | None:
    """The error decoding a Scale's JSON into autoscaling/v1 Scale gives (the first in document order), or
    None: what the fields the server reads (spec.replicas, status.replicas, status.selector) must be."""
    if not isinstance(scale, Mapping):
        return None
    for top in scale:
        if top not in ("spec", "status"):
            continue
        value = scale[top]
        err = _type_error((top,), value)
        if err or not isinstance(value, Mapping):
            if err:
                return err
            continue
        for key in value:
            err = _type_error((top, key), value[key])
            if err:
                return err
    return None


def _type_error(path: tuple[str, ...], value: Any) -> str | None:
    if path not in _GO_TYPES or value is None:
        return None
    struct, go_type = _GO_TYPES[path]
    if go_type == "int32":
        if isinstance(value, int) and not isinstance(value, bool) and _INT32[0] <= value <= _INT32[1]:
            return None
        got = f"number {value}" if isinstance(value, int | float) and not isinstance(value, bool) \
            else go_json_kind(value)
    elif go_type == "string":
        if isinstance(value, str):
            return None
        got = go_json_kind(value)
    else:
        if isinstance(value, Mapping):
            return None
        got = go_json_kind(value)
    return f"json: cannot unmarshal {got} into Go struct field {struct}.{'.'.join(path)} of type {go_type}"



_HTML = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _marshal(value: Any, touched: Any) -> str:
    """json.Marshal of a patched document as the JSON patch library writes it: objects it opened (`touched`,
    a tree of keys) with their keys sorted, the rest as they were."""
    if isinstance(value, Mapping):
        keys = sorted(value) if isinstance(touched, Mapping) else list(value)
        sub = touched if isinstance(touched, Mapping) else {}
        return "{" + ",".join(f"{_marshal(k, None)}:{_marshal(value[k], sub.get(k))}" for k in keys) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_marshal(x, None) for x in value) + "]"
    if isinstance(value, str):
        return "".join(_HTML.get(ch, ch) for ch in json.dumps(value, ensure_ascii=False))
    return json.dumps(value)


def _merge_touched(current: Any, patch: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(patch, Mapping) and isinstance(current, Mapping):
        for k, v in patch.items():
            if isinstance(v, Mapping) and isinstance(current.get(k), Mapping):
                out[k] = _merge_touched(current[k], v)
    return out


def _json_patch_touched(ops: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for op in ops if isinstance(ops, list) else []:
        for key in ("path", "from"):
            ptr = op.get(key) if isinstance(op, Mapping) else None
            if not isinstance(ptr, str):
                continue
            node = out
            for part in ptr.split("/")[1:-1]:  # the containers the operation opens on its way
                node = node.setdefault(part.replace("~1", "/").replace("~0", "~"), {})
    return out


def _check_names(wanted: Mapping[str, Any], ns: str, name: str) -> None:
    """EnsureObjectNamespaceMatchesRequestNamespace, then checkName (handlers/rest.go)."""
    meta = wanted.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    obj_ns = meta.get("namespace") or ""
    if ns and obj_ns and obj_ns != ns:
        raise ApiError(400, "the namespace of the provided object does not match the namespace sent on the "
                            "request", "BadRequest")
    obj_name = meta.get("name") or ""
    if not obj_name:
        raise ApiError(400, f"the name of the object ({name} based on URL) was undeterminable: name must be "
                            "provided", "BadRequest")
    if obj_name != name:
        raise ApiError(400, f"the name of the object ({obj_name}) does not match the name on the URL ({name})",
                       "BadRequest")


async def serve_scale(server: ApiServer, request: web.Request, info: ResourceInfo, ns: str, name: str,
                      verb: str) -> web.Response:
    q = request.query
    if verb == "get":
        scale, found = to_scale(info, server._must_get(info, ns, name))
        if not found:
            raise _missing_replicas(str((info.scale or {}).get("specReplicasPath") or ""))
        return web.json_response(scale)
    dry_run = q.getall("dryRun", [])
    if verb == "patch":
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
        if ctype not in PATCH_TYPES:  # checked first, before the options (PatchResource)
            raise ApiError(415, "the body of the request was in an unknown format - accepted media types include: "
                                + ", ".join(PATCH_TYPES), "UnsupportedMediaType")
        decode.check_write_options("PatchOptions", q, dry_run, ctype)
        body = await server._read_patch(request, ctype)
        obj = server._must_get(info, ns, name)
        current, found = to_scale(info, obj)
        if not found:
            current["spec"] = {"replicas": _UNSET}  # signals "not set before" to the check below
        if ctype == APPLY_PATCH:
            _refuse_apply(obj, body, current, info)
        if ctype == JSON_PATCH:
            wanted, touched = json_patch(json_copy(current), body), _json_patch_touched(body)
        else:
            wanted, touched = merge_patch(json_copy(current), body), _merge_touched(current, body)
        err = decode_error(wanted)
        if err:
            # jsonPatcher.applyPatchToCurrentObject: the patched JSON does not decode as a Scale
            value = _marshal(wanted, touched)
            message = f"Invalid value: {json.dumps(value, ensure_ascii=False)}: {err}"
            raise ApiError(422, f' "" is invalid: patch: {message}', "Invalid",
                           {"causes": [{"reason": "FieldValueInvalid", "message": message, "field": "patch"}]})
        _check_names(wanted, ns, name)
    elif verb == "update":
        decode.check_write_options("UpdateOptions", q, dry_run)
        wanted = await server._read_body(request)
        if not isinstance(wanted, dict):
            raise ApiError(400, "the body of the request was empty or not an object", "BadRequest")
        err = decode_error(wanted)
        if err:
            raise ApiError(400, f'Scale in version "v1" cannot be handled as a Scale: {err}', "BadRequest")
        _check_names(wanted, ns, name)
        obj = server._must_get(info, ns, name)
        to_scale(info, obj)  # UpdatedObject reads the old Scale first: a field of the wrong type is its 500
    else:
        raise ApiError(405, "the server does not allow this method on the requested resource", "MethodNotAllowed")
    replicas = (wanted.get("spec") or {}).get("replicas") or 0
    path = str((info.scale or {}).get("specReplicasPath") or ".spec.replicas")
    if replicas == _UNSET:
        raise ApiError(400, f"the spec replicas field {json.dumps(path)} cannot be empty", "BadRequest")
    new = json_copy(obj)
    _set(new, path, replicas)
    rv = (wanted.get("metadata") or {}).get("resourceVersion")
    if rv:
        new["metadata"]["resourceVersion"] = rv  # the client's precondition
    new["metadata"]["managedFields"] = managedfields.after_scale_write(obj["metadata"], _field_path(path),
                                                                         info.api_version)
    # the managedFields are set above (no entry for the writer): applied=True keeps them as they are
    updated = server.update_object(info, ns, name, new, "scale", dry_run="All" in dry_run, applied=True)
    return web.json_response(to_scale(info, updated)[0])


def _refuse_apply(obj: dict[str, Any], body: Any, current: dict[str, Any], info: ResourceInfo) -> None:
    """Server-side apply of a Scale: the checks the field manager makes before it needs the Scale's type,
    then the 500 it answers for want of one (FieldManager.Apply, structuredMergeManager.Apply)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the body of the request was empty or not an object", "BadRequest")
    api_version = str(body.get("apiVersion") or "")
    group, _, version = api_version.rpartition("/")
    if (group, version, body.get("kind")) != ("autoscaling", "v1", "Scale"):
        raise ApiError(400, f"invalid object type: {group}/{version}, Kind={body.get('kind') or ''}", "BadRequest")
    raw_meta = body.get("metadata")
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    if meta.get("managedFields") is not None:
        raise ApiError(400, "metadata.managedFields must be nil", "BadRequest")
    scale_path = _field_path(str((info.scale or {}).get("specReplicasPath") or ""))
    owned = any(scale_path in fields and entry.get("apiVersion") == info.api_version
                for entry, fields in managedfields.entries(obj["metadata"]).values())
    missing = "no corresponding type for autoscaling/v1, Kind=Scale"
    if not owned:
        # nobody owns the replicas: the Scale has no managedFields, so the field manager first records the
        # live Scale's fields for a "before-first-apply" manager (skipNonAppliedManager), and fails there
        where = f"{current['metadata'].get('namespace', '')}/{current['metadata'].get('name', '')}"
        raise ApiError(500, f"failed to create manager for existing fields: failed to create typed new object "
                            f"({where}; autoscaling/v1, Kind=Scale): {missing}", "")
    where = f"{meta.get('namespace') or ''}/{meta.get('name') or ''}"
    raise ApiError(500, f"failed to create typed patch object ({where}; autoscaling/v1, Kind=Scale): {missing}", "")


def _field_path(path: str) -> tuple[str, ...]:
    return tuple(f"f:{p}" for p in split_path(path))


def _set(obj: dict[str, Any], path: str, value: Any) -> None:
    """unstructured.SetNestedField: missing objects on the way are made; a non-object there is an error."""
    parts = split_path(path)
    node: Any = obj
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        elif not isinstance(nxt, dict):
            raise ApiError(500, f"value cannot be set because {_json_path(parts[:i + 1])} is not a "
                                "map[string]interface{}", "")
        node = nxt
    node[parts[-1]] = value
