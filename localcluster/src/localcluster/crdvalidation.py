"""CustomResourceDefinition validation as the apiextensions server does it on create and update.

The real server converts an ``apiextensions.k8s.io/v1`` CRD to its internal form before validating it,
and that shows in every answer: when all versions carry the same schema (or subresources, or printer
columns) they are moved to the top level, so a cause names ``spec.validation.openAPIV3Schema...`` or
``spec.additionalPrinterColumns[0].JSONPath`` rather than ``spec.versions[0]...``, and the versions
quoted in a ``spec.versions`` cause show ``"Schema":null``. Then, in the server's order:

* ``metadata.name`` (a DNS subdomain, equal to ``plural.group``), ``spec.group`` (a subdomain with a
  dot), ``spec.scope``;
* per version: its name, its schema (``localcluster.schema.validate_crd_schema``: forbidden keywords,
  structural rules, defaults validated as written, CEL rules compiled, type-checked and costed),
  subresources and printer columns (only a leading ``.`` is required of a ``jsonPath``);
* unique version names, exactly one storage version, names (required, DNS-1035 labels), the top-level
  schema / subresources / columns, conversion (``Webhook`` needs a client config and review versions);
* ``status.storedVersions`` (on create: the storage version);
* on update also: ``spec.scope`` and ``spec.names.kind`` immutable once the CRD is Established,
  ``spec.group`` and ``spec.names.plural`` always.

``validate_crd(crd, old=None)`` returns ``FieldError``s (empty when the CRD is acceptable); the CRD is
expected with the v1 defaults applied (``names.singular``/``listKind``, ``conversion``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from localcluster.apiserver.validation import dns1035_label, dns1123_subdomain
from localcluster.schema import (
    FieldError,
    _forbidden,
    _go_struct_json,
    _invalid,
    _invalid_json,
    _not_supported,
    _required,
    validate_crd_schema,
)

__all__ = ["apply_v1_defaults", "internal_view", "stored_versions", "validate_crd"]

def _map(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


_COLUMN_TYPES = ["boolean", "date", "integer", "number", "string"]
_COLUMN_FORMATS = ["byte", "date", "date-time", "double", "float", "int32", "int64", "password"]
_CONVERSION_REVIEW_VERSIONS = ["v1", "v1beta1"]


def _identical(versions: list[Mapping[str, Any]], key: str) -> bool:
    """All versions set the same non-empty value: the v1 conversion then moves it to the top level."""
    if not versions:
        return False
    first = versions[0].get(key)
    return all(v.get(key) not in (None, [], {}) and v.get(key) == first for v in versions)


def internal_view(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of the internal CRD spec validation reads: top-level schema/subresources/columns and
    the per-version ones left in place (each a field path and a value)."""
    versions = [v if isinstance(v, Mapping) else {} for v in spec.get("versions") or []]
    view: dict[str, Any] = {"schema": None, "subresources": None, "columns": None}
    if _identical(versions, "schema"):
        view["schema"] = versions[0]["schema"]
    if _identical(versions, "subresources"):
        view["subresources"] = versions[0]["subresources"]
    if _identical(versions, "additionalPrinterColumns"):
        view["columns"] = versions[0]["additionalPrinterColumns"]
    return view


def _go_version(v: Mapping[str, Any], view: Mapping[str, Any]) -> dict[str, Any]:
    """An internal CustomResourceDefinitionVersion as the server prints it inside a message."""
    hoisted = {k for k in ("schema", "subresources", "columns") if view.get(k) is not None}
    return {
        "Name": v.get("name", ""),
        "Served": bool(v.get("served")),
        "Storage": bool(v.get("storage")),
        "Deprecated": bool(v.get("deprecated")),
        "DeprecationWarning": v.get("deprecationWarning"),
        "Schema": None if "schema" in hoisted else v.get("schema"),
        "Subresources": None if "subresources" in hoisted else v.get("subresources"),
        "AdditionalPrinterColumns": None if "columns" in hoisted else (v.get("additionalPrinterColumns") or None),
        "SelectableFields": v.get("selectableFields") or None,
    }


def _versions_invalid(versions: list[Any], view: Mapping[str, Any], detail: str) -> FieldError:
    quoted = "[" + ",".join(_go_struct_json(_go_version(_map(v), view)) for v in versions) + "]"
    return FieldError("FieldValueInvalid", "spec.versions", f"Invalid value: {quoted}: {detail}")


_subdomain_errors = dns1123_subdomain
_dns1035_errors = dns1035_label


def _names_errors(names: Mapping[str, Any], path: str) -> list[FieldError]:
    errs: list[FieldError] = []
    for key in ("plural", "singular"):
        value = str(names.get(key) or "")
        if value and (problems := _dns1035_errors(value)):
            errs.append(_invalid(f"{path}.{key}", value, ",".join(problems)))
    for key in ("kind", "listKind"):
        value = str(names.get(key) or "")
        if value and (problems := _dns1035_errors(value.lower())):
            errs.append(_invalid(f"{path}.{key}", value, "may have mixed case, but should otherwise match: "
                                 + ",".join(problems)))
    for i, short in enumerate(names.get("shortNames") or []):
        if problems := _dns1035_errors(str(short)):
            errs.append(_invalid(f"{path}.shortNames[{i}]", short, ",".join(problems)))
    kind = names.get("kind")
    if kind and kind == names.get("listKind"):
        errs.append(_invalid(f"{path}.listKind", kind, "kind and listKind may not be the same"))
    for i, cat in enumerate(names.get("categories") or []):
        if problems := _dns1035_errors(str(cat)):
            errs.append(_invalid(f"{path}.categories[{i}]", cat, ",".join(problems)))
    return errs


def _column_errors(col: Mapping[str, Any], path: str) -> list[FieldError]:
    errs: list[FieldError] = []
    if not col.get("name"):
        errs.append(_required(f"{path}.name"))
    typ = col.get("type")
    if not typ:
        errs.append(_required(f"{path}.type", f"must be one of {','.join(_COLUMN_TYPES)}"))
    elif typ not in _COLUMN_TYPES:
        errs.append(_invalid(f"{path}.type", typ, f"must be one of {','.join(_COLUMN_TYPES)}"))
    fmt = col.get("format")
    if fmt and fmt not in _COLUMN_FORMATS:
        errs.append(_invalid(f"{path}.format", fmt, f"must be one of {','.join(_COLUMN_FORMATS)}"))
    jp = col.get("jsonPath")
    if not jp:
        errs.append(_required(f"{path}.JSONPath"))
    else:
        errs.extend(_simple_json_path_errors(str(jp), f"{path}.JSONPath"))
    return errs


def _simple_json_path_errors(jp: str, path: str) -> list[FieldError]:
    """validateSimpleJSONPath: the server only requires the leading dot (the path itself is parsed
    when a Table is made, and a path that does not parse then drops the custom columns)."""
    if not jp.startswith("."):
        return [_invalid(path, jp, "must be a simple json path starting with .")]
    return []


def _subresources_errors(sub: Any, path: str) -> list[FieldError]:
    if not isinstance(sub, Mapping):
        return []
    errs: list[FieldError] = []
    scale = sub.get("scale")
    if isinstance(scale, Mapping):
        for key in ("specReplicasPath", "statusReplicasPath"):
            value = scale.get(key)
            if not value:
                errs.append(_required(f"{path}.scale.{key}"))
                continue
            errs.extend(_simple_json_path_errors(str(value), f"{path}.scale.{key}"))
            prefix = ".spec." if key == "specReplicasPath" else ".status."
            if str(value).startswith(".") and not str(value).startswith(prefix):
                errs.append(_invalid(f"{path}.scale.{key}", value, f"should be a json path under {prefix[:-1]}"))
        sel = scale.get("labelSelectorPath")
        if sel:
            errs.extend(_simple_json_path_errors(str(sel), f"{path}.scale.labelSelectorPath"))
            if str(sel).startswith(".") and not (str(sel).startswith(".spec.") or str(sel).startswith(".status.")):
                errs.append(_invalid(f"{path}.scale.labelSelectorPath", sel,
                                     "should be a json path under either .spec or .status"))
    return errs


def _conversion_errors(conv: Any, path: str) -> list[FieldError]:
    if not isinstance(conv, Mapping):
        return []
    errs: list[FieldError] = []
    strategy = conv.get("strategy")
    if not strategy:
        errs.append(_required(f"{path}.strategy"))
    elif strategy not in ("None", "Webhook"):
        errs.append(_not_supported(f"{path}.strategy", strategy, ["None", "Webhook"]))
    webhook = conv.get("webhook") if isinstance(conv.get("webhook"), Mapping) else None
    client = webhook.get("clientConfig") if webhook else None
    review = list(webhook.get("conversionReviewVersions") or []) if webhook else []
    if strategy == "Webhook":
        if not isinstance(client, Mapping):
            errs.append(_required(f"{path}.webhookClientConfig", "required when strategy is set to Webhook"))
        elif (client.get("url") is None) == (client.get("service") is None):
            errs.append(_required(f"{path}.webhookClientConfig", "exactly one of url or service is required"))
        if not review:
            errs.append(_required(f"{path}.conversionReviewVersions"))
        else:
            seen: set[str] = set()
            for i, v in enumerate(review):
                if v in seen:
                    errs.append(_invalid(f"{path}.conversionReviewVersions[{i}]", v, "duplicate version"))
                    continue
                seen.add(v)
                for problem in _dns1035_errors(str(v)):
                    errs.append(_invalid(f"{path}.conversionReviewVersions[{i}]", v, problem))
            if not set(review) & set(_CONVERSION_REVIEW_VERSIONS):
                errs.append(_invalid_json(f"{path}.conversionReviewVersions", review,
                                     f"must include at least one of {', '.join(_CONVERSION_REVIEW_VERSIONS)}"))
    else:
        if client is not None:
            errs.append(_forbidden(f"{path}.webhookClientConfig",
                                   "should not be set when strategy is not set to Webhook"))
        if review:
            errs.append(_forbidden(f"{path}.conversionReviewVersions",
                                   "should not be set when strategy is not set to Webhook"))
    return errs


def _has_status(sub: Any) -> bool:
    return isinstance(sub, Mapping) and sub.get("status") is not None


def _spec_errors(spec: Mapping[str, Any]) -> list[FieldError]:
    errs: list[FieldError] = []
    group = str(spec.get("group") or "")
    if not group:
        errs.append(_required("spec.group"))
    elif problems := _subdomain_errors(group):
        errs.append(_invalid("spec.group", group, ",".join(problems)))
    elif len(group.split(".")) < 2:
        errs.append(_invalid("spec.group", group, "should be a domain with at least one dot"))
    scope = spec.get("scope")
    if not scope:
        errs.append(_required("spec.scope"))
    elif scope not in ("Cluster", "Namespaced"):
        errs.append(_not_supported("spec.scope", scope, ["Cluster", "Namespaced"]))
    raw_versions = spec.get("versions") or []
    versions = [v if isinstance(v, Mapping) else {} for v in raw_versions]
    view = internal_view(spec)
    if view["schema"] is None:
        for i, v in enumerate(versions):
            if not isinstance((v.get("schema") or {}).get("openAPIV3Schema"), Mapping):
                errs.append(_required(f"spec.versions[{i}].schema.openAPIV3Schema"))
    any_status = _has_status(view["subresources"]) or any(_has_status(v.get("subresources")) for v in versions)
    unique, storage = _version_errors(versions, view, errs)
    if not unique:
        errs.append(_versions_invalid(raw_versions, view, "must contain unique version names"))
    if storage != 1:
        errs.append(_versions_invalid(raw_versions, view, "must have exactly one version marked as storage version"))
    names = _map(spec.get("names"))
    for key in ("plural", "singular", "kind", "listKind"):
        if not names.get(key):
            errs.append(_required(f"spec.names.{key}"))
    errs.extend(_names_errors(names, "spec.names"))
    if view["schema"] is not None:
        schema = (view["schema"] or {}).get("openAPIV3Schema")
        if isinstance(schema, Mapping):
            errs.extend(validate_crd_schema(schema, "spec.validation.openAPIV3Schema", any_status))
    if view["subresources"] is not None:
        errs.extend(_subresources_errors(view["subresources"], "spec.subresources"))
    for j, col in enumerate(view["columns"] or []):
        if isinstance(col, Mapping):
            errs.extend(_column_errors(col, f"spec.additionalPrinterColumns[{j}]"))
    if spec.get("preserveUnknownFields") and (spec.get("conversion") or {}).get("strategy") not in (None, "None"):
        errs.append(_invalid("spec.conversion.strategy", spec["conversion"]["strategy"],
                             "must be None if spec.preserveUnknownFields is true"))
    errs.extend(_conversion_errors(spec.get("conversion"), "spec.conversion"))
    return errs


def _version_errors(versions: list[Mapping[str, Any]], view: Mapping[str, Any],
                   errs: list[FieldError]) -> tuple[bool, int]:
    """Each version's own errors (appended to errs); returns whether the names are unique and how many
    versions are marked as storage."""
    names_seen: set[str] = set()
    unique = True
    storage = 0
    for i, v in enumerate(versions):
        base = f"spec.versions[{i}]"
        storage += bool(v.get("storage"))
        name = str(v.get("name") or "")
        if name in names_seen:
            unique = False
        names_seen.add(name)
        if problems := _dns1035_errors(name):
            errs.append(_invalid(f"{base}.name", name, ",".join(problems)))
        if v.get("deprecationWarning") is not None and not v.get("deprecated"):
            errs.append(_invalid(f"{base}.deprecationWarning", v.get("deprecationWarning"),
                                 "can only be set for deprecated versions"))
        status_enabled = _has_status(view["subresources"] if view["subresources"] is not None
                                     else v.get("subresources"))
        if view["schema"] is None:
            schema = (v.get("schema") or {}).get("openAPIV3Schema")
            if isinstance(schema, Mapping):
                errs.extend(validate_crd_schema(schema, f"{base}.schema.openAPIV3Schema", status_enabled))
        if view["subresources"] is None:
            errs.extend(_subresources_errors(v.get("subresources"), f"{base}.subresources"))
        if view["columns"] is None:
            for j, col in enumerate(v.get("additionalPrinterColumns") or []):
                if isinstance(col, Mapping):
                    errs.extend(_column_errors(col, f"{base}.additionalPrinterColumns[{j}]"))
    return unique, storage


def stored_versions(spec: Mapping[str, Any]) -> list[str]:
    """What a create records in status.storedVersions: the (first) storage version."""
    for v in spec.get("versions") or []:
        if isinstance(v, Mapping) and v.get("storage"):
            return [str(v.get("name") or "")]
    return []


def _stored_versions_errors(stored: list[str], versions: list[Any]) -> list[FieldError]:
    if not stored:
        return [_invalid_json("status.storedVersions", None, "must have at least one stored version")]
    errs: list[FieldError] = []
    remaining = {v: i for i, v in enumerate(stored)}
    for v in versions:
        if not isinstance(v, Mapping):
            continue
        name = str(v.get("name") or "")
        if v.get("storage") and name not in remaining:
            errs.append(_invalid_json("status.storedVersions", stored, f"must have the storage version {name}"))
        remaining.pop(name, None)
    for v, i in remaining.items():
        errs.append(_invalid(f"status.storedVersions[{i}]", v, f"missing from spec.versions; {v} was previously a "
                             f"storage version, and must remain in spec.versions until a storage migration ensures "
                             f"no data remains persisted in {v} and removes {v} from status.storedVersions"))
    return errs


def is_established(crd: Mapping[str, Any]) -> bool:
    for c in (crd.get("status") or {}).get("conditions") or []:
        if isinstance(c, Mapping) and c.get("type") == "Established" and c.get("status") == "True":
            return True
    return False


def _immutable(path: str, new: Any, old: Any) -> list[FieldError]:
    return [] if new == old else [_invalid(path, new, "field is immutable")]


def apply_v1_defaults(crd: dict[str, Any]) -> None:
    """What decoding an apiextensions.k8s.io/v1 CRD fills in: singular, listKind, conversion None."""
    spec = crd.get("spec")
    if not isinstance(spec, dict):
        return
    names = spec.get("names")
    if isinstance(names, dict) and names.get("kind"):
        names.setdefault("singular", str(names["kind"]).lower())
        names.setdefault("listKind", f"{names['kind']}List")
    spec.setdefault("conversion", {"strategy": "None"})


def validate_crd(crd: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> list[FieldError]:
    """ValidateCustomResourceDefinition (old None) or ValidateCustomResourceDefinitionUpdate.

    A CRD as written (a manifest: no status) is validated as its create would be: v1 defaults applied
    and the storage version recorded as stored.
    """
    if old is None and "storedVersions" not in (crd.get("status") or {}):
        copy = json.loads(json.dumps(crd))
        apply_v1_defaults(copy)
        copy["status"] = {"storedVersions": stored_versions(copy.get("spec") or {})}
        crd = copy
    spec = _map(crd.get("spec"))
    errs: list[FieldError] = []
    name = str((crd.get("metadata") or {}).get("name") or "")
    if old is None:
        problems = _subdomain_errors(name)
        names = _map(spec.get("names"))
        if name != f"{names.get('plural', '')}.{spec.get('group', '')}":
            problems.append('must be spec.names.plural+"."+spec.group')
        errs.extend(_invalid("metadata.name", name, p) for p in problems)
    errs.extend(_spec_errors(spec))
    if old is not None:
        old_spec = _map(old.get("spec"))
        new_names = spec.get("names") or {}
        old_names = old_spec.get("names") or {}
        if is_established(old):
            errs.extend(_immutable("spec.scope", spec.get("scope"), old_spec.get("scope")))
            errs.extend(_immutable("spec.names.kind", new_names.get("kind"), old_names.get("kind")))
        errs.extend(_immutable("spec.group", spec.get("group"), old_spec.get("group")))
        errs.extend(_immutable("spec.names.plural", new_names.get("plural"), old_names.get("plural")))
    status = _map(crd.get("status"))
    accepted = _map(status.get("acceptedNames"))
    errs.extend(_names_errors(accepted, "status.acceptedNames"))
    stored = list(status.get("storedVersions") or [])
    errs.extend(_stored_versions_errors(stored, list(spec.get("versions") or [])))
    old_preserve = old is not None and bool(_map(old.get("spec")).get("preserveUnknownFields"))
    if spec.get("preserveUnknownFields") and not old_preserve:
        errs.append(_invalid("spec.preserveUnknownFields", True, "cannot set to true, set "
                             "x-kubernetes-preserve-unknown-fields to true in spec.versions[*].schema instead"))
    return errs


