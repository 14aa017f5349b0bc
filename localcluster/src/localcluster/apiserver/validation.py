"""Validation of built-in objects as the real API server words it: object metadata (names, labels,
annotations, finalizers, owner references) and the kinds the operator writes (ConfigMap, Pod, Event,
NetworkPolicy).

Each function returns causes (`{reason, message, field}`) in the order the real server lists them; the
caller raises one 422 with all of them. `decode_errors` covers what the real server refuses earlier, while
decoding JSON into its Go types (400 BadRequest): a number where a string belongs, bad base64, a bad
quantity, a time without microseconds.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from localcluster.quantity import parse_quantity

if TYPE_CHECKING:
    import jsonschema

Cause = dict[str, Any]

_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN_FMT = _LABEL_FMT + "(\\." + _LABEL_FMT + ")*"
_DNS1035_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"
_QUALIFIED_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE_FMT = "(" + _QUALIFIED_FMT + ")?"
_CONFIG_KEY_FMT = "[-._a-zA-Z0-9]+"
_QUANTITY_RE = re.compile(r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$")
_MICRO_TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)$")

TOTAL_ANNOTATION_SIZE = 256 * 1024
CONFIGMAP_MAX_SIZE = 1024 * 1024
STANDARD_FINALIZERS = {"kubernetes", "orphan", "foregroundDeletion"}
MAX_INT32 = 2**31 - 1


def regex_error(msg: str, fmt: str, *examples: str) -> str:
    """apimachinery's RegexError: the message, its examples, then the regex."""
    if not examples:
        return f"{msg} (regex used for validation is '{fmt}')"
    return msg + " (e.g. " + " or ".join(f"'{e}', " for e in examples) + f"regex used for validation is '{fmt}')"


LABEL_MSG = regex_error("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
                        "must start and end with an alphanumeric character", _LABEL_FMT, "my-name", "123-abc")
SUBDOMAIN_MSG = regex_error("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
                            "or '.', and must start and end with an alphanumeric character", _SUBDOMAIN_FMT,
                            "example.com")
DNS1035_MSG = regex_error("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
                          "alphabetic character, and end with an alphanumeric character", _DNS1035_FMT, "my-name",
                          "abc-123")
QUALIFIED_MSG = regex_error("must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                            "alphanumeric character", _QUALIFIED_FMT, "MyName", "my.name", "123-abc")
LABEL_VALUE_MSG = regex_error("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' "
                              "or '.', and must start and end with an alphanumeric character", _LABEL_VALUE_FMT,
                              "MyValue", "my_value", "12345")
CONFIG_KEY_MSG = regex_error("a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                             _CONFIG_KEY_FMT, "key.name", "KEY_NAME", "key-name")


def _full(fmt: str) -> re.Pattern[str]:
    return re.compile(f"^(?:{fmt})$")


_LABEL_RE, _SUBDOMAIN_RE, _DNS1035_RE = _full(_LABEL_FMT), _full(_SUBDOMAIN_FMT), _full(_DNS1035_FMT)
_QUALIFIED_RE, _LABEL_VALUE_RE, _CONFIG_KEY_RE = _full(_QUALIFIED_FMT), _full(_LABEL_VALUE_FMT), _full(_CONFIG_KEY_FMT)


def value_repr(v: Any) -> str:
    """How field errors print a value: strings quoted, numbers bare, structures as JSON."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if v is None:
        return "null"
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"))


def invalid(field: str, value: Any, msg: str) -> Cause:
    return {"reason": "FieldValueInvalid", "field": field, "message": f"Invalid value: {value_repr(value)}: {msg}"}


def required(field: str, detail: str = "") -> Cause:
    return {"reason": "FieldValueRequired", "field": field,
            "message": f"Required value: {detail}" if detail else "Required value"}


def forbidden(field: str, detail: str) -> Cause:
    return {"reason": "FieldValueForbidden", "field": field, "message": f"Forbidden: {detail}"}


def not_supported(field: str, value: Any, supported: list[str]) -> Cause:
    quoted = ", ".join(f'"{s}"' for s in supported)
    return {"reason": "FieldValueNotSupported", "field": field,
            "message": f"Unsupported value: {value_repr(value)}: supported values: {quoted}"}


def too_long(field: str, limit: int) -> Cause:
    return {"reason": "FieldValueTooLong", "field": field, "message": f"Too long: may not be more than {limit} bytes"}


def not_found(field: str, value: Any) -> Cause:
    return {"reason": "FieldValueNotFound", "field": field, "message": f"Not found: {value_repr(value)}"}


def duplicate(field: str, value: Any) -> Cause:
    return {"reason": "FieldValueDuplicate", "field": field, "message": f"Duplicate value: {value_repr(value)}"}


def range_error(lo: int, hi: int) -> str:
    return f"must be between {lo} and {hi}, inclusive"


# ---------------------------------------------------------------------------------------------- names
def dns1123_label(value: str) -> list[str]:
    errs = ["must be no more than 63 characters"] if len(value) > 63 else []
    return errs + ([] if _LABEL_RE.match(value) else [LABEL_MSG])


def dns1123_subdomain(value: str) -> list[str]:
    errs = ["must be no more than 253 characters"] if len(value) > 253 else []
    return errs + ([] if _SUBDOMAIN_RE.match(value) else [SUBDOMAIN_MSG])


def dns1035_label(value: str) -> list[str]:
    errs = ["must be no more than 63 characters"] if len(value) > 63 else []
    return errs + ([] if _DNS1035_RE.match(value) else [DNS1035_MSG])


def qualified_name(value: str, what: str = "a qualified name") -> list[str]:
    """IsQualifiedName: an optional DNS-subdomain prefix and '/', then a name part of at most 63 bytes (label
    selectors name the whole `what` "a valid label key")."""
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
        errs: list[str] = []
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errs = ["prefix part must be non-empty"]
        else:
            errs = [f"prefix part {m}" for m in dns1123_subdomain(prefix)]
    else:
        return [f"{what} " + regex_error(
            "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric "
            "character", _QUALIFIED_FMT, "MyName", "my.name", "123-abc")
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"]
    if not name:
        errs.append("name part must be non-empty")
    elif len(name.encode()) > 63:
        errs.append("name part must be no more than 63 bytes")
    if not _QUALIFIED_RE.match(name):
        errs.append("name part " + QUALIFIED_MSG)
    return errs


def label_value(value: str) -> list[str]:
    """IsValidLabelValue: empty, or at most 63 bytes of the qualified-name characters."""
    errs = ["must be no more than 63 bytes"] if len(value.encode()) > 63 else []
    return errs + ([] if _LABEL_VALUE_RE.match(value) else [LABEL_VALUE_MSG])


def name_rule(plural: str) -> Any:
    """The name rule of a kind: namespaces are DNS labels, services DNS-1035 labels, the rest DNS subdomains."""
    return {"namespaces": dns1123_label, "services": dns1035_label}.get(plural, dns1123_subdomain)


def _mask_trailing_dash(prefix: str) -> str:
    return prefix[:-1] + "a" if len(prefix) > 1 and prefix.endswith("-") else prefix


def validate_labels(labels: Any, field: str) -> list[Cause]:
    causes: list[Cause] = []
    for k, v in (labels or {}).items():
        causes += [invalid(field, k, m) for m in qualified_name(k)]
        causes += [invalid(field, v, m) for m in label_value(str(v))]
    return causes


def validate_annotations(annotations: Any, field: str) -> list[Cause]:
    causes: list[Cause] = []
    total = 0
    for k, v in (annotations or {}).items():
        causes += [invalid(field, k, m) for m in qualified_name(k.lower())]
        total += len(k.encode()) + len(str(v).encode())
    if total > TOTAL_ANNOTATION_SIZE:
        causes.append(too_long(field, TOTAL_ANNOTATION_SIZE))
    return causes


def _owner_ref(ref: dict[str, Any]) -> dict[str, Any]:
    """An owner reference as the server prints it: Go's field order, empty optionals left out."""
    out = {k: ref.get(k, "") for k in ("apiVersion", "kind", "name", "uid")}
    for k in ("controller", "blockOwnerDeletion"):
        if ref.get(k) is not None:
            out[k] = ref[k]
    return out


def validate_owner_references(refs: list[dict[str, Any]], field: str) -> list[Cause]:
    causes: list[Cause] = []
    controller = ""
    for ref in refs:
        api_version = str(ref.get("apiVersion") or "")
        parts = api_version.split("/")
        version = parts[-1] if len(parts) <= 2 else ""
        if not version:
            causes.append(invalid(f"{field}.apiVersion", api_version, "version must not be empty"))
        for key in ("kind", "name", "uid"):
            if not ref.get(key):
                causes.append(invalid(f"{field}.{key}", str(ref.get(key) or ""), "must not be empty"))
        if ref.get("controller") is True:
            current = f"{ref.get('kind', '')}/{ref.get('name', '')}"
            if controller:
                causes.append(invalid(field, [_owner_ref(r) for r in refs],
                                      'Only one reference can have Controller set to true. Found "true" in '
                                      f"references for {controller} and {current}"))
            else:
                controller = current
    return causes


def dedup_owner_references(meta: dict[str, Any]) -> list[str]:
    """The registry drops owner references repeating a uid (keeping the first) and warns about them."""
    refs = meta.get("ownerReferences")
    if not isinstance(refs, list):
        return []
    seen: set[str] = set()
    kept, dups = [], []
    for r in refs:
        uid = str((r or {}).get("uid", ""))
        if uid in seen:
            if uid not in dups:
                dups.append(uid)
            continue
        seen.add(uid)
        kept.append(r)
    if not dups:
        return []
    meta["ownerReferences"] = kept
    return [".metadata.ownerReferences contains duplicate entries; API server dedups owner references in 1.20+, "
            "and may reject such requests as early as 1.24; please fix your requests; duplicate UID(s) observed: "
            + ", ".join(dups)]


def validate_finalizers(finalizers: list[str], field: str, builtin: bool) -> list[Cause]:
    causes: list[Cause] = []
    for f in finalizers:
        causes += [invalid(field, f, m) for m in qualified_name(f)]
    if builtin:
        for i, f in enumerate(finalizers):
            if "/" not in f and f not in STANDARD_FINALIZERS:
                causes.append(invalid(f"{field}[{i}]", f,
                                      "name is neither a standard finalizer name nor is it fully qualified"))
    return causes


def generated_name(prefix: str, suffix: str) -> str:
    """generateName: the prefix cut to 58 characters, then the random suffix (63 at most)."""
    return prefix[:58] + suffix


def validate_meta(plural: str, meta: dict[str, Any], builtin: bool) -> list[Cause]:
    """ValidateObjectMeta: generateName, name, labels, annotations, owner references, finalizers."""
    rule = name_rule(plural)
    causes: list[Cause] = []
    gen = meta.get("generateName")
    if gen and plural != "customresourcedefinitions":
        causes += [invalid("metadata.generateName", gen, m) for m in rule(_mask_trailing_dash(gen))]
    name = meta.get("name") or ""
    if not name:
        causes.append(required("metadata.name", "name or generateName is required"))
    elif plural != "customresourcedefinitions":
        causes += [invalid("metadata.name", name, m) for m in rule(name)]
    causes += validate_labels(meta.get("labels"), "metadata.labels")
    causes += validate_annotations(meta.get("annotations"), "metadata.annotations")
    causes += validate_owner_references(meta.get("ownerReferences") or [], "metadata.ownerReferences")
    causes += validate_finalizers(meta.get("finalizers") or [], "metadata.finalizers", builtin)
    return causes


def validate_meta_update(old_meta: dict[str, Any], meta: dict[str, Any], builtin: bool) -> list[Cause]:
    """No new finalizers once deleting; built-in kinds run this check twice, and both causes are listed."""
    if not old_meta.get("deletionTimestamp"):
        return []
    added = sorted(set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or []))
    if not added:
        return []
    listed = ", ".join(json.dumps(f) for f in added)
    cause = forbidden("metadata.finalizers", "no new finalizers can be added if the object is being deleted, found "
                                             f"new finalizers []string{{{listed}}}")
    return [cause, dict(cause)] if builtin else [cause]


# ---------------------------------------------------------------------------------------------- decoding
def _go_type(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _string_map(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        return f"json: cannot unmarshal {_go_type(value)} into Go struct field {where} of type map[string]string"
    for v in value.values():
        if not isinstance(v, str):
            return f"json: cannot unmarshal {_go_type(v)} into Go struct field {where} of type string"
    return None


def quantity_error(value: Any) -> str | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return None
    if not isinstance(value, str) or not _QUANTITY_RE.match(value):
        return "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
    return None


def _base64_error(value: str) -> str | None:
    alphabet = re.compile(r"[A-Za-z0-9+/=]")
    for i, ch in enumerate(value):
        if not alphabet.match(ch):
            return f"illegal base64 data at input byte {i}"
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return f"illegal base64 data at input byte {max(len(value) - 1, 0)}"
    return None


def _pod_decode_error(pod: dict[str, Any]) -> str | None:
    spec = pod.get("spec") or {}
    if not isinstance(spec, dict):
        return None
    for field in ("containers", "initContainers"):
        for c in spec.get(field) or []:
            if not isinstance(c, dict):
                continue
            sc = c.get("securityContext") or {}
            for key in ("readOnlyRootFilesystem", "privileged", "runAsNonRoot", "allowPrivilegeEscalation"):
                if key in sc and sc[key] is not None and not isinstance(sc[key], bool):
                    return (f"json: cannot unmarshal {_go_type(sc[key])} into Go struct field SecurityContext.spec."
                            f"{field}.securityContext.{key} of type bool")
            for section in ("limits", "requests"):
                for q in ((c.get("resources") or {}).get(section) or {}).values():
                    err = quantity_error(q)
                    if err:
                        return err
    for v in spec.get("volumes") or []:
        limit = ((v or {}).get("emptyDir") or {}).get("sizeLimit")
        if limit is not None and quantity_error(limit):
            return quantity_error(limit)
    return None


_JSON_TYPES = {"string": "string", "integer": "number", "number": "number", "boolean": "bool", "array": "array",
               "object": "object"}


def published_schema_error(obj: dict[str, Any], *, strict: bool) -> jsonschema.ValidationError | None:
    """The first error kubernetes-validate finds in a built-in object against the published schemas of
    Kubernetes 1.35 (`strict`: unknown fields are errors too).

    None when it finds none, is not installed, or cannot judge the object: no schema for its kind (or for
    1.35), a broken or unresolvable schema, or an object nested deeper than jsonschema's recursion reaches.
    """
    try:
        import kubernetes_validate  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    import referencing.exceptions  # kubernetes-validate's own dependency, as jsonschema is

    try:
        kubernetes_validate.validate(obj, "1.35", strict=strict)
    except kubernetes_validate.ValidationError as e:  # a jsonschema ValidationError
        return e
    except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.utils.VersionNotSupportedError,
            kubernetes_validate.InvalidSchemaError, referencing.exceptions.Unresolvable, RecursionError):
        return None
    return None


def shape_error(obj: Any) -> str | None:
    """The first value of a built-in object whose JSON type its published schema does not allow, worded like
    Go's JSON decoder (None when kubernetes-validate is not installed or finds no such value)."""
    if not isinstance(obj, dict):  # no object for a schema to judge; the caller reports the body as it is
        return None
    e = published_schema_error(obj, strict=False)
    if e is None or e.validator != "type":
        return None
    path = ".".join(str(p) for p in e.absolute_path if not isinstance(p, int))
    wanted = e.validator_value
    wanted = next((w for w in wanted if w != "null"), "") if isinstance(wanted, list) else wanted
    return (f"json: cannot unmarshal {_go_type(e.instance)} into Go struct field {path} of "
            f"type {_JSON_TYPES.get(str(wanted), wanted)}")


def drop_nulls(value: Any) -> Any:
    """Go's JSON decoding reads null as the zero value: an unset field, an empty list element."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [{} if v is None else drop_nulls(v) for v in value]
    return value


def decode_errors(key: tuple[str, str], obj: dict[str, Any]) -> str | None:
    """What decoding into the Go types refuses (the server answers 400 with this after its prefix)."""
    meta = obj.get("metadata") or {}
    if isinstance(meta, dict):
        for field in ("labels", "annotations"):
            err = _string_map(meta.get(field), f"ObjectMeta.metadata.{field}")
            if err:
                return err
    if key == ("", "configmaps"):
        err = _string_map(obj.get("data"), "ConfigMap.data")
        if err:
            return err
        binary = obj.get("binaryData") or {}
        if isinstance(binary, dict):
            for v in binary.values():
                if not isinstance(v, str):
                    return (f"json: cannot unmarshal {_go_type(v)} into Go struct field ConfigMap.binaryData of "
                            "type []uint8")
                err = _base64_error(v)
                if err:
                    return err
    elif key == ("", "pods"):
        return _pod_decode_error(obj)
    elif key == ("events.k8s.io", "events") or key == ("", "events"):
        t = obj.get("eventTime")
        if isinstance(t, str) and not _MICRO_TIME_RE.match(t):
            rest = t[19:] if len(t) >= 19 else t
            return (f'parsing time "{t}" as "2006-01-02T15:04:05.000000Z07:00": cannot parse "{rest}" as '
                    '".000000"')
    return None


# ---------------------------------------------------------------------------------------------- ConfigMap
def validate_configmap(cm: dict[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    total = 0
    data = cm.get("data") or {}
    binary = cm.get("binaryData") or {}
    for k, v in data.items():
        causes += [invalid(f"data[{k}]", k, m) for m in config_key(k)]
        if k in binary:
            causes.append(invalid(f"data[{k}]", k, "duplicate of key present in binaryData"))
        total += len(str(v).encode())
    for k, v in binary.items():
        causes += [invalid(f"binaryData[{k}]", k, m) for m in config_key(k)]
        total += len(base64.b64decode(v)) if isinstance(v, str) else 0
    if total > CONFIGMAP_MAX_SIZE:
        causes.append(too_long("[]", CONFIGMAP_MAX_SIZE))
    return causes


def config_key(key: str) -> list[str]:
    errs = ["must be no more than 253 characters"] if len(key) > 253 else []
    if not _CONFIG_KEY_RE.match(key):
        errs.append(CONFIG_KEY_MSG)
    if key == ".":
        errs.append("must not be '.'")
    elif key == "..":
        errs.append("must not be '..'")
    elif key.startswith(".."):
        errs.append("must not start with '..'")
    return errs


def validate_immutable_update(old: dict[str, Any], new: dict[str, Any], fields: tuple[str, ...]) -> list[Cause]:
    """ConfigMaps and Secrets marked `immutable`: neither the flag nor the contents may change."""
    if old.get("immutable") is not True:
        return []
    msg = "field is immutable when `immutable` is set"
    causes = [] if new.get("immutable") is True else [forbidden("immutable", msg)]
    for f in fields:
        if (old.get(f) or {}) != (new.get(f) or {}):
            causes.append(forbidden(f, msg))
    return causes


# ---------------------------------------------------------------------------------------------- Pod
def _quantity(value: Any) -> Decimal | None:
    try:
        return parse_quantity(value)
    except (ValueError, TypeError):
        return None


_VOLUME_FIELD_PATHS = ["metadata.annotations", "metadata.labels", "metadata.name", "metadata.namespace",
                       "metadata.uid"]
_CONVERTIBLE_FIELD_PATHS = set(_VOLUME_FIELD_PATHS) | {
    "spec.nodeName", "spec.restartPolicy", "spec.serviceAccountName", "spec.schedulerName", "status.phase",
    "status.hostIP", "status.hostIPs", "status.podIP", "status.podIPs"}
_SUBSCRIPT_RE = re.compile(r"^(metadata\.(?:annotations|labels))\['(.*)'\]$")


def _local_path(path: str, field: str) -> list[Cause]:
    if path.startswith("/"):
        return [invalid(field, path, "must be a relative path")]
    if ".." in path.split("/"):
        return [invalid(field, path, "must not contain '..'")]
    return []


def _downward_items(items: list[dict[str, Any]], field: str) -> list[Cause]:
    """Downward-API volume files (the real server names the field without the item's index)."""
    causes: list[Cause] = []
    for item in items:
        path = str(item.get("path") or "")
        causes += [required(f"{field}.path")] if not path else _local_path(path, f"{field}.path")
        ref = item.get("fieldRef")
        if not isinstance(ref, dict):
            continue
        fp = str(ref.get("fieldPath") or "")
        sub = _SUBSCRIPT_RE.match(fp)
        if sub:
            key = sub.group(2).lower() if sub.group(1) == "metadata.annotations" else sub.group(2)
            causes += [invalid(f"{field}.fieldRef", key, m) for m in qualified_name(key)]
        elif fp not in _CONVERTIBLE_FIELD_PATHS:
            causes.append(invalid(f"{field}.fieldRef.fieldPath", fp,
                                  f"error converting fieldPath: field label not supported: {fp}"))
        elif fp not in _VOLUME_FIELD_PATHS:
            causes.append(not_supported(f"{field}.fieldRef.fieldPath", fp, _VOLUME_FIELD_PATHS))
    return causes


def _volumes(volumes: list[dict[str, Any]]) -> tuple[set[str], list[Cause]]:
    names: set[str] = set()
    causes: list[Cause] = []
    for i, v in enumerate(volumes):
        field = f"spec.volumes[{i}]"
        name = str(v.get("name") or "")
        errs: list[Cause] = []
        if not name:
            errs.append(required(f"{field}.name"))
        else:
            errs += [invalid(f"{field}.name", name, m) for m in dns1123_label(name)]
            if name in names:
                errs.append(duplicate(f"{field}.name", name))
        downward = v.get("downwardAPI")
        if isinstance(downward, dict):
            errs += _downward_items(downward.get("items") or [], f"{field}.downwardAPI")
        if not errs:
            names.add(name)
        causes += errs
    return names, causes


def _container(c: dict[str, Any], field: str, volumes: set[str]) -> list[Cause]:
    causes: list[Cause] = []
    name = str(c.get("name") or "")
    if not name:
        causes.append(required(f"{field}.name"))
    else:
        causes += [invalid(f"{field}.name", name, m) for m in dns1123_label(name)]
    if not c.get("image"):
        causes.append(required(f"{field}.image"))
    for j, m in enumerate(c.get("volumeMounts") or []):
        if m.get("name") not in volumes:
            causes.append(not_found(f"{field}.volumeMounts[{j}].name", m.get("name")))
    res = c.get("resources") or {}
    limits, requests = res.get("limits") or {}, res.get("requests") or {}
    for rname, req in requests.items():
        if rname in limits:
            lq, rq = _quantity(limits[rname]), _quantity(req)
            if lq is not None and rq is not None and rq > lq:
                causes.append(invalid(f"{field}.resources.requests", str(req),
                                      f"must be less than or equal to {rname} limit of {limits[rname]}"))
    causes += _security_context(c.get("securityContext") or {}, f"{field}.securityContext")
    return causes


def _security_context(sc: dict[str, Any], field: str) -> list[Cause]:
    causes: list[Cause] = []
    for key in ("runAsUser", "runAsGroup"):
        v = sc.get(key)
        if isinstance(v, int) and not 0 <= v <= MAX_INT32:
            causes.append(invalid(f"{field}.{key}", v, range_error(0, MAX_INT32)))
    return causes


def validate_pod(pod: dict[str, Any]) -> list[Cause]:
    """ValidatePodSpec for the fields the operator and its users set, in the real server's order."""
    spec = pod.get("spec") or {}
    volumes, causes = _volumes(spec.get("volumes") or [])
    containers = spec.get("containers") or []
    if not containers:
        causes.append(required("spec.containers"))
    seen: set[str] = set()
    for field, items in (("containers", containers), ("initContainers", spec.get("initContainers") or [])):
        for i, c in enumerate(items):
            causes += _container(c, f"spec.{field}[{i}]", volumes)
            name = c.get("name")
            if name and name in seen:
                causes.append(duplicate(f"spec.{field}[{i}].name", name))
            seen.add(name)
    policy = spec.get("restartPolicy")
    if policy not in ("Always", "OnFailure", "Never"):
        causes.append(not_supported("spec.restartPolicy", policy or "", ["Always", "OnFailure", "Never"]))
    causes += _security_context(spec.get("securityContext") or {}, "spec.securityContext")
    deadline = spec.get("activeDeadlineSeconds")
    if isinstance(deadline, int) and not 1 <= deadline <= MAX_INT32:
        causes.append(invalid("spec.activeDeadlineSeconds", deadline, range_error(1, MAX_INT32)))
    return causes


def validate_pod_update(old: dict[str, Any], new: dict[str, Any]) -> list[Cause]:
    """The specific pod update rules checked before the general 'may not change fields' one."""
    o, n = old.get("spec") or {}, new.get("spec") or {}
    causes: list[Cause] = []
    if len(o.get("containers") or []) != len(n.get("containers") or []):
        return [forbidden("spec.containers", "pod updates may not add or remove containers")]  # the last check
    od, nd = o.get("activeDeadlineSeconds"), n.get("activeDeadlineSeconds")
    if od is not None:
        if nd is None:
            causes.append(invalid("spec.activeDeadlineSeconds", nd, "must not update from a positive integer to "
                                                                    "nil value"))
        elif isinstance(nd, int) and nd > od:
            causes.append(invalid("spec.activeDeadlineSeconds", nd, "must be less than or equal to previous value"))
    return causes


# ---------------------------------------------------------------------------------------------- Event
def validate_core_event(ev: dict[str, Any], ns: str) -> list[Cause]:
    involved = ev.get("involvedObject") or {}
    inv_ns = involved.get("namespace")
    if inv_ns and inv_ns != ns:
        return [invalid("involvedObject.namespace", inv_ns, "does not match event.namespace")]
    return []


def validate_events_v1(ev: dict[str, Any]) -> list[Cause]:
    """events.k8s.io/v1: eventTime, reportingController/Instance, action, type and note are checked."""
    causes: list[Cause] = []
    if not ev.get("eventTime"):
        causes.append(required("eventTime"))
    controller = str(ev.get("reportingController") or "")
    if not controller:
        causes.append(required("reportingController"))
    causes += [invalid("reportingController", controller, m) for m in qualified_name(controller)]
    if len(controller) > 128:
        causes.append(invalid("reportingController", "", "can have at most 128 characters"))
    for field in ("reportingInstance", "action", "reason"):
        value = str(ev.get(field) or "")
        if not value:
            causes.append(required(field))
        elif len(value) > 128:
            causes.append(invalid(field, "", "can have at most 128 characters"))
    etype = ev.get("type")
    if etype not in ("Normal", "Warning"):
        causes.append(invalid("type", "", f"has invalid value: {etype or ''}"))
    if len(str(ev.get("note") or "")) > 1024:
        causes.append(invalid("message", "", "can have at most 1024 characters"))
    return causes


# ---------------------------------------------------------------------------------------------- NetworkPolicy
def _selector(sel: Any, field: str) -> list[Cause]:
    if not isinstance(sel, dict):
        return []
    return validate_labels(sel.get("matchLabels"), f"{field}.matchLabels")


def validate_network_policy(np: dict[str, Any]) -> list[Cause]:
    spec = np.get("spec") or {}
    causes = _selector(spec.get("podSelector"), "spec.podSelector")
    for direction, peers_key in (("ingress", "from"), ("egress", "to")):
        for i, rule in enumerate(spec.get(direction) or []):
            for j, port in enumerate(rule.get("ports") or []):
                p = port.get("port")
                if isinstance(p, int) and not 1 <= p <= 65535:
                    causes.append(invalid(f"spec.{direction}[{i}].ports[{j}].port", p, range_error(1, 65535)))
                proto = port.get("protocol")
                if proto is not None and proto not in ("TCP", "UDP", "SCTP"):
                    causes.append(not_supported(f"spec.{direction}[{i}].ports[{j}].protocol", proto,
                                                ["SCTP", "TCP", "UDP"]))
            for j, peer in enumerate(rule.get(peers_key) or []):
                for sel in ("podSelector", "namespaceSelector"):
                    causes += _selector(peer.get(sel), f"spec.{direction}[{i}].{peers_key}[{j}].{sel}")
    for i, t in enumerate(spec.get("policyTypes") or []):
        if t not in ("Ingress", "Egress"):
            causes.append(not_supported(f"spec.policyTypes[{i}]", t, ["Ingress", "Egress"]))
    return causes


def default_network_policy(np: dict[str, Any]) -> None:
    """policyTypes defaults to Ingress, plus Egress when egress rules are given."""
    spec = np.setdefault("spec", {})
    if not spec.get("policyTypes"):
        spec["policyTypes"] = ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]
