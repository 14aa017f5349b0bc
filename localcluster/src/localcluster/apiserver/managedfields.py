"""Field ownership (`metadata.managedFields`) and server-side apply, as the API server's field manager keeps them.

Every write records which manager owns which fields. A manager is the `fieldManager` parameter (else the
client's User-Agent name) with the operation (`Update` for create/update/patch, `Apply` for server-side
apply) and the subresource: each such triple is one `managedFields` entry whose `fieldsV1` is the set of
fields it owns. An update takes the fields it adds or changes from every other manager. An apply merges
its configuration over the live object (`merge`), owns exactly the fields of its configuration, fails
with 409 when it would change a field another manager owns (unless forced, which takes the field over),
and removes the fields it applied before and no longer applies when nobody else owns them.

Field sets are sets of paths; a path is a tuple of `fieldsV1` keys: `f:name` for object fields and map
keys, `k:{"key":"value"}` for items of `x-kubernetes-list-type: map` lists, `v:value` for items of `set`
lists. Other lists are atomic: a list is one leaf (built-in kinds have no schema here, so their lists
are atomic too, where the real server keys some by their strategic-merge keys). A path that is not a
leaf but is a member of the set (a map added by an update, a keyed list item) is written with a `.`
key, as the server writes it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from localcluster.apiserver.patch import json_copy
from localcluster.apiserver.status import ApiError

Path = tuple[str, ...]
FieldSet = set[Path]

APPLY = "Apply"
UPDATE = "Update"
#: object metadata the field manager never tracks (the server sets it, or it names the object)
_STRIPPED_META = frozenset({
    "name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp", "selfLink", "managedFields",
    "deletionTimestamp", "deletionGracePeriodSeconds",
})


def _list_kind(schema: Mapping[str, Any] | None) -> tuple[str, list[str]]:
    if not schema:
        return "atomic", []
    kind = schema.get("x-kubernetes-list-type") or "atomic"
    return kind, list(schema.get("x-kubernetes-list-map-keys") or [])


def _child_schema(schema: Mapping[str, Any] | None, key: str) -> Mapping[str, Any] | None:
    if not schema:
        return None
    props = schema.get("properties") or {}
    if key in props:
        return props[key]
    ap = schema.get("additionalProperties")
    return ap if isinstance(ap, Mapping) else None


def _item_key(item: Any, kind: str, keys: list[str]) -> str | None:
    if kind == "map" and isinstance(item, Mapping):
        return "k:" + json.dumps({k: item[k] for k in sorted(keys) if k in item}, separators=(",", ":"))
    if kind == "set":
        return "v:" + json.dumps(item, separators=(",", ":"))
    return None


def _walk(value: Any, schema: Mapping[str, Any] | None, path: Path, nodes: bool,
          out: dict[Path, Any]) -> None:
    """Every member path of value under path, with its value (leaves) or None (inner members)."""
    if isinstance(value, Mapping) and value:
        if nodes and path:
            out[path] = None
        for k, v in value.items():
            _walk(v, _child_schema(schema, k), (*path, f"f:{k}"), nodes, out)
        return
    if isinstance(value, list) and value:
        kind, keys = _list_kind(schema)
        if kind != "atomic":
            items = schema.get("items") if schema else None
            if nodes and path:
                out[path] = None
            for item in value:
                key = _item_key(item, kind, keys)
                if key is None:
                    out[path] = value
                    return
                if kind == "map":
                    out[(*path, key)] = None
                    _walk_item(item, items, (*path, key), nodes, out)
                else:
                    out[(*path, key)] = item
            return
    out[path] = value


def _walk_item(item: Mapping[str, Any], schema: Mapping[str, Any] | None, path: Path, nodes: bool,
               out: dict[Path, Any]) -> None:
    for k, v in item.items():
        _walk(v, _child_schema(schema, k), (*path, f"f:{k}"), nodes, out)


def members(obj: Mapping[str, Any] | None, schema: Mapping[str, Any] | None, nodes: bool = True) -> dict[Path, Any]:
    """The tracked fields of an object (apiVersion, kind and server-set metadata left out)."""
    out: dict[Path, Any] = {}
    if not obj:
        return out
    for k, v in obj.items():
        if k in ("apiVersion", "kind"):
            continue
        if k == "metadata" and isinstance(v, Mapping):
            for mk, mv in v.items():  # metadata itself is always there: only its fields are members
                if mk not in _STRIPPED_META and mv not in (None, "", {}, []):  # ObjectMeta omits empty ones
                    _walk(mv, None, ("f:metadata", f"f:{mk}"), nodes, out)
            continue
        _walk(v, _child_schema(schema, k), (f"f:{k}",), nodes, out)
    out.pop((), None)
    return out


def _ignored(path: Path, reset: tuple[str, ...]) -> bool:
    return bool(path) and path[0] in reset


def reset_fields(has_status: bool, sub: str) -> tuple[str, ...]:
    """Fields a write through this endpoint cannot set: status on the main resource, all but status on /status."""
    if sub == "status":
        return ("f:metadata", "f:spec")
    return ("f:status",) if has_status else ()


def compare(old: dict[Path, Any], new: dict[Path, Any]) -> FieldSet:
    """The paths added or modified from old to new."""
    return {p for p, v in new.items() if p not in old or (v is not None and old[p] != v)}


def to_fields_v1(paths: FieldSet) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for p in sorted(paths):
        node = tree
        for part in p:
            node = node.setdefault(part, {})
    for p in paths:
        node = tree
        for part in p:
            node = node[part]
        if node and "." not in node:
            node["."] = {}
    return tree


def from_fields_v1(tree: Mapping[str, Any], prefix: Path = ()) -> FieldSet:
    out: FieldSet = set()
    for k, v in tree.items():
        if k == ".":
            out.add(prefix)
        elif isinstance(v, Mapping) and v:
            out |= from_fields_v1(v, (*prefix, k))
        else:
            out.add((*prefix, k))
    return out


def _entry_key(e: Mapping[str, Any]) -> tuple[str, str, str]:
    return str(e.get("manager", "")), str(e.get("operation", "")), str(e.get("subresource", ""))


def _entries(meta: Mapping[str, Any]) -> dict[tuple[str, str, str], tuple[dict[str, Any], FieldSet]]:
    out = {}
    for e in meta.get("managedFields") or []:
        if isinstance(e, Mapping):
            out[_entry_key(e)] = (dict(e), from_fields_v1(e.get("fieldsV1") or {}))
    return out


def entries(meta: Mapping[str, Any]) -> dict[tuple[str, str, str], tuple[dict[str, Any], FieldSet]]:
    """The managedFields entries of an object's metadata by (manager, operation, subresource), with their fields."""
    return _entries(meta)


def after_scale_write(meta: Mapping[str, Any], path: Path, api_version: str) -> list[dict[str, Any]]:
    """The managedFields a write through a custom resource's `scale` subresource leaves (`path` is the
    spec replicas field).

    The scale scope's field manager types objects with the resource's own schema, which has no Scale, so
    its update fails; FieldManager.UpdateNoErrors then keeps the live Scale's managedFields
    (kubernetes/kubernetes#136949): the entries that own the replicas, relabelled autoscaling/v1. For an
    Update entry that relabelling changes its identity (the apiVersion is part of it), so
    ScaleHandler.ToParent takes the replicas from the object's entry (dropping it if nothing is left)
    and adds a second entry of the same manager owning only the replicas, without a time; Apply entries
    keep theirs. No entry is recorded for the writer. The entries are decoded first (one per identity,
    the last one winning) and encoded sorted, as the server does.
    """
    decoded: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for e in meta.get("managedFields") or []:
        if isinstance(e, Mapping):
            op = str(e.get("operation", ""))
            key = (str(e.get("manager", "")), op, str(e.get("apiVersion", "")) if op == UPDATE else "",
                   str(e.get("subresource", "")))
            decoded[key] = dict(e)
    out: list[dict[str, Any]] = []
    for e in decoded.values():
        fields = from_fields_v1(e.get("fieldsV1") or {})
        if e.get("operation") != UPDATE or e.get("apiVersion") != api_version or path not in fields:
            out.append(e)
            continue
        rest = fields - {path}
        if rest:
            out.append({**e, "fieldsV1": to_fields_v1(rest)})
        out.append({**{k: e[k] for k in ("manager", "operation", "apiVersion", "subresource") if k in e},
                    "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1({path})})
    # sortEncodedManagedFields: operation, time (none first), manager, apiVersion, subresource
    out.sort(key=lambda e: (str(e.get("operation", "")), str(e.get("time") or ""), str(e.get("manager", "")),
                            str(e.get("apiVersion", "")), str(e.get("subresource", ""))))
    return out


def _render(entries: dict[tuple[str, str, str], tuple[dict[str, Any], FieldSet]]) -> list[dict[str, Any]]:
    out = []
    for entry, fields in entries.values():
        if fields:
            out.append({**entry, "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(fields)})
    return out


def _path_text(path: Path) -> str:
    """fieldpath.Path's String(): `.spec.cancel`, `.spec.ports[name="a"]`, `.spec.tags[="x"]`."""
    out = ""
    for part in path:
        kind, _, rest = part.partition(":")
        if kind == "f":
            out += f".{rest}"
        elif kind == "k":
            out += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in json.loads(rest).items()) + "]"
        elif kind == "v":
            out += f"[={rest}]"
    return out


def _manager_text(key: tuple[str, str, str], entry: Mapping[str, Any]) -> str:
    name, op, sub = key
    text = json.dumps(name)
    if op == UPDATE:
        text += f" using {entry.get('apiVersion', '')}"
        if entry.get("time"):
            text += f" at {entry['time']}"
    if sub:
        text += f" with subresource {json.dumps(sub)}"
    return text


def _conflict_error(conflicts: list[tuple[str, Path]]) -> ApiError:
    causes = [{"reason": "FieldManagerConflict", "message": f"conflict with {m}", "field": _path_text(p)}
              for m, p in conflicts]
    if len(conflicts) == 1:
        m, p = conflicts[0]
        message = f"Apply failed with 1 conflict: conflict with {m}: {_path_text(p)}"
    else:
        lines = []
        for manager in sorted({m for m, _ in conflicts}):
            lines.append(f"conflicts with {manager}:")
            lines.extend(f"- {_path_text(p)}" for m, p in conflicts if m == manager)
        message = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)
    return ApiError(409, message, "Conflict", {"causes": causes})


def record_update(old_obj: Mapping[str, Any] | None, new_obj: dict[str, Any], schema: Mapping[str, Any] | None,
                  manager: str, api_version: str, sub: str, has_status: bool, now: str) -> None:
    """Set new_obj's managedFields after a create/update/patch by manager (an Update operation)."""
    meta = new_obj.setdefault("metadata", {})
    old_meta = (old_obj or {}).get("metadata") or {}
    entries = _entries(old_meta)
    reset = reset_fields(has_status, sub)
    old_m = members(old_obj, schema) if old_obj else {}
    new_m = members(new_obj, schema)
    changed = {p for p in compare(old_m, new_m) if not _ignored(p, reset)}
    removed = {p for p in old_m if p not in new_m}
    key = (manager, UPDATE, sub)
    for k, (entry, fields) in list(entries.items()):
        if k != key:
            entries[k] = (entry, fields - changed)
    entry, fields = entries.get(key, ({"manager": manager, "operation": UPDATE}, set()))
    owned = (fields | changed) - removed
    if owned != fields or key not in entries:
        entry = {"manager": manager, "operation": UPDATE, "apiVersion": api_version, "time": now,
                 **({"subresource": sub} if sub else {})}
    entries[key] = (entry, owned)
    meta["managedFields"] = _render(entries)


def apply(live: dict[str, Any], config: Mapping[str, Any], merged: dict[str, Any], schema: Mapping[str, Any] | None,
          manager: str, api_version: str, sub: str, has_status: bool, force: bool, now: str) -> dict[str, Any]:
    """Server-side apply of config (already merged over live as `merged`) by manager.

    Checks conflicts (409 unless force; forced fields are taken from their owners), removes the fields
    the manager applied before and no longer applies when nobody else owns them, and sets the
    managedFields of the returned object.
    """
    reset = reset_fields(has_status, sub)
    entries = _entries(live.get("metadata") or {})
    key = (manager, APPLY, sub)
    applied = {p for p in members(config, schema, nodes=False) if not _ignored(p, reset)}
    previous = entries.get(key, ({}, set()))[1]
    others = set().union(*(f for k, (_, f) in entries.items() if k != key)) if entries else set()
    for path in sorted(previous - applied - others, key=len, reverse=True):
        _remove(merged, path)
    changed = {p for p in compare(members(live, schema), members(merged, schema)) if not _ignored(p, reset)}
    conflicts = sorted((_manager_text(k, e), p) for k, (e, f) in entries.items() if k != key
                       for p in f & changed)
    if conflicts and not force:
        raise _conflict_error(conflicts)
    for k, (entry, fields) in list(entries.items()):
        if k != key:
            entries[k] = (entry, fields - changed)
    entry = {"manager": manager, "operation": APPLY, "apiVersion": api_version, "time": now,
             **({"subresource": sub} if sub else {})}
    if key in entries and entries[key][1] == applied:
        entry = entries[key][0]
    entries[key] = (entry, applied)
    merged.setdefault("metadata", {})["managedFields"] = _render(entries)
    return merged


def merge(live: Any, config: Any, schema: Mapping[str, Any] | None) -> Any:
    """An applied configuration merged over the live value (a copy): objects field by field, lists of
    `x-kubernetes-list-type` map by their keys and set by value, other lists and scalars replaced."""
    if isinstance(config, Mapping) and isinstance(live, Mapping):
        out = {k: json_copy(v) for k, v in live.items()}
        for k, v in config.items():
            out[k] = merge(live.get(k), v, _child_schema(schema, k))
        return out
    kind, keys = _list_kind(schema)
    if isinstance(config, list) and isinstance(live, list) and kind != "atomic":
        items = schema.get("items") if schema else None
        out_items = [json_copy(x) for x in live]
        index = {_item_key(x, kind, keys): i for i, x in enumerate(out_items)}
        for item in config:
            key = _item_key(item, kind, keys)
            if key is not None and key in index:
                out_items[index[key]] = merge(out_items[index[key]], item, items)
            else:
                index[key] = len(out_items)
                out_items.append(json_copy(item))
        return out_items
    return json_copy(config)


def _remove(obj: Any, path: Path) -> None:
    node = obj
    for part in path[:-1]:
        node = _step(node, part)
        if node is None:
            return
    last = path[-1]
    kind, _, rest = last.partition(":")
    if kind == "f" and isinstance(node, dict):
        node.pop(rest, None)
    elif isinstance(node, list):
        target = _step(node, last)
        if target is not None:
            node.remove(target)


def _step(node: Any, part: str) -> Any:
    kind, _, rest = part.partition(":")
    if kind == "f":
        return node.get(rest) if isinstance(node, dict) else None
    if not isinstance(node, list):
        return None
    want = json.loads(rest)
    for item in node:
        if kind == "k" and isinstance(item, dict) and all(item.get(k) == v for k, v in want.items()):
            return item
        if kind == "v" and item == want:
            return item
    return None
