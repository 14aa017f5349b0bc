"""Decoding request bodies the way the API server's decoders do: duplicate keys, unknown metadata
fields, request-option checks, and the wording of their errors.

The real server decodes JSON with a strict decoder that notes keys given twice (the last value
wins) and unknown `metadata` fields (dropped); `fieldValidation` decides whether these are an
error, a `Warning`, or nothing. Options such as `dryRun` or `fieldValidation` are validated before
the body, as `CreateOptions`/`UpdateOptions`/`PatchOptions`/`DeleteOptions` objects.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from localcluster import nesting
from localcluster.apiserver.status import options_invalid

#: the fields of metav1.ObjectMeta; anything else under `metadata` is an unknown field
OBJECT_META_FIELDS = frozenset({
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
    "ownerReferences", "finalizers", "managedFields",
})
FIELD_VALIDATION = ("", "Ignore", "Strict", "Warn")
PROPAGATION = ("Foreground", "Background", "Orphan")


def not_json_number(word: str) -> Any:
    """NaN and Infinity are not JSON: refused as the API server's decoder refuses them."""
    raise ValueError(f"invalid character '{word[0]}' looking for beginning of value")


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its key/value pairs in order, duplicates kept."""


def loads(raw: bytes) -> tuple[Any, list[str]]:
    """Parse JSON; also return the paths of keys given twice (`spec.code`). The last value wins."""
    duplicated = False

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal duplicated
        d = dict(pairs)
        duplicated = duplicated or len(d) != len(pairs)
        return d

    deep = nesting.too_deep(raw)
    if deep:
        raise ValueError(deep)
    value = json.loads(raw, object_pairs_hook=hook, parse_constant=not_json_number)
    if not duplicated:
        return value, []
    paths: list[str] = []
    _duplicates(json.loads(raw, object_pairs_hook=_Pairs), "", paths)
    return value, paths


def loads_plain(raw: bytes) -> Any:
    """Parse JSON as the API server's decoder does (NaN refused, at most MAX_NESTING_DEPTH deep)."""
    deep = nesting.too_deep(raw)
    if deep:
        raise ValueError(deep)
    return json.loads(raw, parse_constant=not_json_number)


def _duplicates(node: Any, path: str, out: list[str]) -> None:
    if isinstance(node, _Pairs):
        seen: set[str] = set()
        for k, v in node:
            child = f"{path}.{k}" if path else k
            if k in seen:
                out.append(child)
            seen.add(k)
            _duplicates(v, child, out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _duplicates(v, f"{path}[{i}]", out)


def json_error_text(exc: ValueError, raw: bytes) -> str:
    """Go's wording for the commonest JSON syntax error (a truncated document), else Python's."""
    pos = getattr(exc, "pos", None)
    if pos is not None and not raw[pos:].strip():
        return "unexpected end of JSON input"
    return str(exc)


def unknown_meta_fields(body: Mapping[str, Any]) -> list[str]:
    """`metadata.x` for each key of metadata that ObjectMeta does not have."""
    meta = body.get("metadata")
    if not isinstance(meta, Mapping):
        return []
    return [f"metadata.{k}" for k in meta if k not in OBJECT_META_FIELDS]


def check_write_options(kind: str, query: Mapping[str, str], dry_run: list[str], patch_type: str = "") -> None:
    """Validate the options of a create, update or patch (`CreateOptions` ...); 422 as the server answers."""
    causes: list[dict[str, Any]] = []
    _check_dry_run(dry_run, causes)
    fv = query.get("fieldValidation", "")
    if fv not in FIELD_VALIDATION:
        supported = ", ".join(json.dumps(v) for v in FIELD_VALIDATION)
        causes.append({"reason": "FieldValueNotSupported", "field": "fieldValidation",
                       "message": f"Unsupported value: {json.dumps(fv)}: supported values: {supported}"})
    if kind == "PatchOptions":
        apply = patch_type == "application/apply-patch+yaml"
        if apply and not query.get("fieldManager"):
            causes.append({"reason": "FieldValueRequired", "field": "fieldManager",
                           "message": "Required value: is required for apply patch"})
        if not apply and "force" in query:
            causes.append({"reason": "FieldValueForbidden", "field": "force",
                           "message": "Forbidden: may not be specified for non-apply patch"})
    if causes:
        raise options_invalid(kind, causes)


def check_delete_options(opts: Mapping[str, Any], dry_run: list[str]) -> None:
    causes: list[dict[str, Any]] = []
    _check_dry_run(dry_run, causes)
    policy = opts.get("propagationPolicy")
    if policy is not None and policy not in PROPAGATION:
        supported = ", ".join(json.dumps(v) for v in (*PROPAGATION, "nil"))
        causes.append({"reason": "FieldValueNotSupported", "field": "propagationPolicy",
                       "message": f"Unsupported value: {json.dumps(policy)}: supported values: {supported}"})
    if causes:
        raise options_invalid("DeleteOptions", causes)


def _check_dry_run(dry_run: list[str], causes: list[dict[str, Any]]) -> None:
    if any(v != "All" for v in dry_run):
        given = json.dumps(dry_run, separators=(",", ":"))
        causes.append({"reason": "FieldValueNotSupported", "field": "dryRun",
                       "message": f'Unsupported value: {given}: supported values: "All"'})
