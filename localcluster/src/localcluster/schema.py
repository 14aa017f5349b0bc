"""CustomResourceDefinition schema semantics of the kube-apiserver, as pure functions.

The local API server uses this module to treat custom resources the way a real
``apiextensions.k8s.io/v1`` server does, so that tests see the same objects and the same
``422 Invalid`` causes they would see on a real cluster:

* ``default_and_prune(schema, obj)`` - structural pruning of unknown fields (kept under
  ``x-kubernetes-preserve-unknown-fields``; ``apiVersion``/``kind``/``metadata`` kept at the
  resource root and in ``x-kubernetes-embedded-resource`` objects), removal of non-nullable
  ``null`` values that have no default, then OpenAPI ``default``s at every level whose parent
  exists (a defaulted object is itself defaulted). The server does this on write and on read.
* ``strict_unknown_fields(schema, obj)`` - the paths pruning would drop, worded like the real
  server's ``fieldValidation=Strict`` answer (``unknown field "spec.foo"``).
* ``validate(schema, obj, old=None, path="")`` - the value validation of kube-openapi
  (type, nullable, required, enum, minimum/maximum/exclusive*, multipleOf, minLength/maxLength
  counted in characters, pattern, format, minItems/maxItems, minProperties/maxProperties,
  int-or-string, allOf/anyOf/oneOf/not), then ``x-kubernetes-list-type`` set/map uniqueness,
  then the CEL rules of ``x-kubernetes-validations`` - unless one of the earlier errors is
  "blocking", in which case the server skips CEL and says so in one extra cause. Errors kube-openapi
  raises without a field (the range of a number for its type and format, anyOf/oneOf/allOf/not) are
  on the validated root: ``<nil>: Invalid value: "": Checked value must be of type integer (default
  format) in spec.timeoutSeconds``. On update, errors of values the update left unchanged are
  dropped (CRDValidationRatcheting; not inside lists), and list-type errors are reported only when the
  old object had none.
* ``validate_status(schema, obj, old)`` - a ``/status`` write: ``status`` checked against the status
  schema alone (messages name paths relative to it, causes are on ``status.<path>`` or ``status``),
  list types and CEL rules on the whole object.
* ``validate_crd(crd, old=None)`` - CRD validation on create/update (``localcluster.crdvalidation``);
  its schema part is ``validate_crd_schema(schema, path)``: no ``$ref``/``definitions``/
  ``uniqueItems``, properties and additionalProperties exclusive, list/map-type rules, every node
  typed unless int-or-string/preserve-unknown, defaults that are pruned and validate as written
  (their CEL rules included), CEL rules that compile, type-check and fit the cost budget
  (``localcluster.celcheck``), and ``oldSelf`` only where old values correlate.

Errors are ``FieldError(type, field, message)``; ``type`` is the StatusCause ``reason`` and
``message`` is the cause message, both worded as the current (1.3x) API server words them, e.g.
``Invalid value: 301: spec.timeoutSeconds in body should be less than or equal to 300``,
``Required value``, ``Unsupported value: "x": supported values: "a", "b"``,
``Too long: may not be more than 102400 bytes``, ``Too many: 4: must have at most 3 items``,
``Invalid value: "string": spec.n in body must be of type integer: "string"``,
``Duplicate value: {"name":"a"}`` (a 1.36 server prints numbers and booleans as Go's %v, strings
quoted, anything else - null, maps, lists - as JSON), ``Invalid value: failed rule: self.a <= self.b``
(object/array values are omitted by the server).

CEL coverage (evaluated with cel-python, ``import celpy``; each rule is parsed once and cached by
its text): the CEL core language and standard macros (``has``, ``all``, ``exists``,
``exists_one``, ``map``, ``filter``), ``size``, ``matches``, ``startsWith``, ``endsWith``,
``contains``, ``in``, conversions (``int``, ``string``, ``double``, ``duration``, ``timestamp``),
timestamp/duration accessors, equality of maps/lists/strings/dyn (``self == oldSelf``).
Values are typed from the schema as the server types them: ``integer`` -> int, ``number`` ->
double, strings with ``format: date-time``/``duration``/``byte`` -> timestamp/duration/bytes,
int-or-string and preserve-unknown -> dyn. Kubernetes libraries added here: the cel-go strings
extension (``charAt``, ``indexOf``, ``lastIndexOf``, ``lowerAscii``, ``upperAscii``, ``replace``,
``split``, ``substring``, ``trim``, ``join``), the Kubernetes list library (``isSorted``, ``sum``,
``min``, ``max``, ``indexOf``, ``lastIndexOf``), regex (``find``, ``findAll``), URLs (``url``,
``isURL``, ``getScheme``, ``getHost``, ``getHostname``, ``getPort``, ``getEscapedPath``,
``getQuery``), quantities (``quantity``, ``isQuantity``, ``compareTo``, ``isLessThan``,
``isGreaterThan``, ``add``, ``sub``, ``asInteger``, ``asApproximateFloat``, ``sign``,
``isInteger``) and optionals for ``optionalOldSelf`` (``hasValue``, ``value``, ``orValue``).
Transition rules (those referencing ``oldSelf``) run only on update when an old value exists at
the same path (object properties, granular maps, and list-type=map items matched by key), unless
``optionalOldSelf`` is true. ``reason`` (FieldValueInvalid, FieldValueForbidden,
FieldValueRequired, FieldValueDuplicate), ``message``, ``messageExpression`` and ``fieldPath``
are honoured. As on a current server, a rule without ``oldSelf`` whose value is unchanged by an
update is ratcheted (not reported). A library failure inside ``||``/``&&`` is absorbed the way
CEL absorbs errors; any other evaluation failure becomes a ``... evaluating rule: ...`` cause,
never an exception. Not covered: the ``?.``/``[?]`` optional syntax, the
``sets``/``format``/``ip``/``cidr``/``semver`` libraries, and ratcheting of schema errors inside
lists.

Speed: schemas compile once into a node tree (cached by object identity), CEL rules compile once
(cached by text), and rule outcomes on small values are memoised, since rules are pure. Objects
are modified in place and never deep-copied; a 100 KB Execution validates in tens of microseconds.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime as _dt
import ipaddress
import json
import math
import re
import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import celpy
import celpy.celtypes as ct
import celpy.evaluation
from celpy.evaluation import CELEvalError

from localcluster import celcheck, nesting
from localcluster.quantity import quantity_value

__all__ = [
    "FieldError",
    "compile_schema",
    "default_and_prune",
    "strict_unknown_fields",
    "validate",
    "validate_crd",
    "validate_status",
]

# StatusCause reasons (metav1.CauseType / field.ErrorType).
REQUIRED = "FieldValueRequired"
INVALID = "FieldValueInvalid"
TYPE_INVALID = "FieldValueTypeInvalid"
NOT_SUPPORTED = "FieldValueNotSupported"
TOO_LONG = "FieldValueTooLong"
TOO_MANY = "FieldValueTooMany"
FORBIDDEN = "FieldValueForbidden"
DUPLICATE = "FieldValueDuplicate"
INTERNAL = "InternalError"

_BLOCKING = frozenset({NOT_SUPPORTED, REQUIRED, TOO_LONG, TOO_MANY, TYPE_INVALID})
_BLOCKED_MESSAGE = (
    "some validation rules were not checked because the object was invalid; "
    "correct the existing errors to complete validation"
)
_NIL_PATH = "<nil>"


@dataclass(frozen=True, slots=True)
class FieldError:
    """One cause of a 422 Invalid answer, shaped like a Kubernetes StatusCause."""

    type: str
    field: str
    message: str

    def as_cause(self) -> dict[str, str]:
        """The ``status.details.causes[]`` entry the API server returns."""
        return {"reason": self.type, "message": self.message, "field": self.field}

    def __str__(self) -> str:
        """``field: message``, as the server joins causes into the Status message."""
        return f"{self.field}: {self.message}"


# ---------------------------------------------------------------------------------------------
# Go value formatting, so messages read exactly like the server's (fmt %v, %q, %#v).


_GO_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\a": "\\a",
               "\b": "\\b", "\f": "\\f", "\v": "\\v"}


def _go_quote(s: str) -> str:
    """strconv.Quote."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif ch.isprintable() or ch == " ":
            out.append(ch)
        elif o <= 0xFFFF:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    out.append('"')
    return "".join(out)


def _go_float(f: float) -> str:
    """fmt %v of a float64: strconv 'g' with the shortest digits (exponent form from 1e+06 and below 1e-04)."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "0"
    _, digit_tuple, exponent = Decimal(repr(float(f))).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0") or "0"
    assert isinstance(exponent, int)
    exp = exponent + len("".join(map(str, digit_tuple))) - 1
    sign = "-" if f < 0 else ""
    if exp < -4 or exp >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}e{'+' if exp >= 0 else '-'}{abs(exp):02d}"
    if exp < 0:
        return f"{sign}0.{'0' * (-exp - 1)}{digits}"
    whole = digits[: exp + 1].ljust(exp + 1, "0")
    frac = digits[exp + 1 :]
    return f"{sign}{whole}.{frac}" if frac else f"{sign}{whole}"


def _go_value(v: Any) -> str:
    """How field.Error.ErrorBody (1.36) prints a bad value: numbers and bools with %v, strings
    with %q, anything else (null, maps, lists) as encoding/json.Marshal writes it."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _go_float(v)
    if isinstance(v, str):
        return _go_quote(v)
    return _go_json(v)


_JSON_HTML_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _go_json_float(f: float) -> str:
    """encoding/json's float64: the shortest digits, exponent form below 1e-6 and from 1e21."""
    if f.is_integer() and abs(f) < 1e21:
        return str(int(f))
    text = repr(f)
    if 1e-6 <= abs(f) < 1e21:
        return text if "e" not in text else format(Decimal(text), "f")
    mantissa, _, exp = text.partition("e")
    sign = "-" if exp.startswith("-") else "+"
    return f"{mantissa}e{sign}{exp.lstrip('+-').lstrip('0') or '0'}"


def _go_json_scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _go_json_float(v)
    if isinstance(v, str):
        return "".join(_JSON_HTML_ESCAPES.get(ch, ch) for ch in json.dumps(v, ensure_ascii=False))
    return _go_quote(str(v))


class _Text(str):
    """Already written output, told apart from a string value still to encode."""


def _go_json(v: Any) -> str:
    """encoding/json.Marshal of a decoded JSON value: sorted keys, HTML characters escaped.

    Iterative (a stack of values and written pieces): a stored value may nest deeper than Python's
    recursion limit.
    """
    out: list[str] = []
    todo: list[Any] = [v]
    while todo:
        item = todo.pop()
        if isinstance(item, _Text):
            out.append(item)
        elif isinstance(item, Mapping):
            pieces: list[Any] = [_Text("{")]
            for i, k in enumerate(sorted(item)):
                pieces += [_Text(("," if i else "") + _go_json_scalar(str(k)) + ":"), item[k]]
            todo.extend(reversed([*pieces, _Text("}")]))
        elif isinstance(item, list | tuple):
            pieces = [_Text("[")]
            for i, x in enumerate(item):
                pieces += [_Text(","), x] if i else [x]
            todo.extend(reversed([*pieces, _Text("]")]))
        else:
            out.append(_go_json_scalar(item))
    return "".join(out)


def _go_struct_json(fields: Mapping[str, Any]) -> str:
    """encoding/json.Marshal of a Go struct: its fields in declaration order (``fields``' order)."""
    return "{" + ",".join(f"{_go_json(k)}:{_go_json(v)}" for k, v in fields.items()) + "}"


_OMIT = object()


def _body(kind: str, value: Any, detail: str) -> str:
    s = kind if value is _OMIT else f"{kind}: {_go_value(value)}"
    return f"{s}: {detail}" if detail else s


def _f(path: str) -> str:
    return path if path else _NIL_PATH


def _invalid(path: str, value: Any, detail: str) -> FieldError:
    return FieldError(INVALID, _f(path), _body("Invalid value", value, detail))


def _invalid_json(path: str, value: Any, detail: str) -> FieldError:
    """field.Invalid with a composite (or null) value: a current server prints those as JSON."""
    return FieldError(INVALID, _f(path), f"Invalid value: {_go_json(value)}: {detail}")


def _type_invalid(path: str, value: Any, detail: str) -> FieldError:
    return FieldError(TYPE_INVALID, _f(path), _body("Invalid value", value, detail))


def _required(path: str, detail: str = "") -> FieldError:
    return FieldError(REQUIRED, _f(path), f"Required value: {detail}" if detail else "Required value")


def _forbidden(path: str, detail: str = "") -> FieldError:
    return FieldError(FORBIDDEN, _f(path), f"Forbidden: {detail}" if detail else "Forbidden")


def _duplicate(path: str, value: Any) -> FieldError:
    return FieldError(DUPLICATE, _f(path), _body("Duplicate value", value, ""))


def _internal(path: str, detail: str) -> FieldError:
    return FieldError(INTERNAL, _f(path), f"Internal error: {detail}")


def _not_supported(path: str, value: Any, allowed: Iterable[Any]) -> FieldError:
    vals = [a if isinstance(a, str) else _go_json(a) for a in allowed]
    detail = "supported values: " + ", ".join(_go_quote(v) for v in vals) if vals else ""
    return FieldError(NOT_SUPPORTED, _f(path), _body("Unsupported value", value, detail))


def _too_long(path: str, max_len: int) -> FieldError:
    unit = "byte" if max_len == 1 else "bytes"
    return FieldError(TOO_LONG, _f(path), f"Too long: may not be more than {max_len} {unit}")


def _too_many(path: str, actual: int, max_n: int) -> FieldError:
    unit = "item" if max_n == 1 else "items"
    return FieldError(TOO_MANY, _f(path), f"Too many: {actual}: must have at most {max_n} {unit}")


# ---------------------------------------------------------------------------------------------
# Compiled schema tree. Compiling once per schema keeps per-write work to the value walk.

_META_FIELDS = frozenset({"apiVersion", "kind", "metadata"})


class _Node:
    """One schema node, with everything the walks need precomputed."""

    __slots__ = (
        "additional",
        "all_of",
        "any_of",
        "default",
        "embedded",
        "enum",
        "exclusive_maximum",
        "exclusive_minimum",
        "format",
        "has_default",
        "has_defaults_below",
        "has_embedded_below",
        "has_listtype_below",
        "has_rules_below",
        "int_or_string",
        "items",
        "list_map_keys",
        "list_type",
        "map_type",
        "max_items",
        "max_length",
        "max_properties",
        "maximum",
        "min_items",
        "min_length",
        "min_properties",
        "minimum",
        "multiple_of",
        "not_",
        "nullable",
        "one_of",
        "pattern",
        "pattern_src",
        "preserve_unknown",
        "properties",
        "required",
        "rules",
        "type",
        "type_names",
        "type_set",
    )

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.type: str = raw.get("type") or ""
        self.int_or_string: bool = bool(raw.get("x-kubernetes-int-or-string"))
        if self.int_or_string:
            self.type_set: frozenset[str] = frozenset({"integer", "string"})
            self.type_names = "integer,string"
        elif self.type:
            self.type_set = frozenset({self.type})
            self.type_names = self.type
        else:
            self.type_set = frozenset()
            self.type_names = ""
        self.nullable: bool = bool(raw.get("nullable"))
        self.preserve_unknown: bool = bool(raw.get("x-kubernetes-preserve-unknown-fields"))
        self.embedded: bool = bool(raw.get("x-kubernetes-embedded-resource"))
        self.has_default: bool = "default" in raw
        self.default: Any = raw.get("default")
        self.enum: list[Any] | None = raw.get("enum")
        self.format: str = raw.get("format") or ""
        self.minimum: float | None = raw.get("minimum")
        self.maximum: float | None = raw.get("maximum")
        self.exclusive_minimum: bool = bool(raw.get("exclusiveMinimum"))
        self.exclusive_maximum: bool = bool(raw.get("exclusiveMaximum"))
        self.multiple_of: float | None = raw.get("multipleOf")
        self.min_length: int | None = raw.get("minLength")
        self.max_length: int | None = raw.get("maxLength")
        self.pattern_src: str | None = raw.get("pattern")
        self.pattern: re.Pattern[str] | None = _compile_pattern(self.pattern_src) if self.pattern_src else None
        self.min_items: int | None = raw.get("minItems")
        self.max_items: int | None = raw.get("maxItems")
        self.min_properties: int | None = raw.get("minProperties")
        self.max_properties: int | None = raw.get("maxProperties")
        self.required: list[str] = list(raw.get("required") or ())
        self.list_type: str | None = raw.get("x-kubernetes-list-type")
        self.list_map_keys: list[str] = list(raw.get("x-kubernetes-list-map-keys") or ())
        self.map_type: str | None = raw.get("x-kubernetes-map-type")
        props = raw.get("properties") or {}
        self.properties: dict[str, _Node] = {k: _Node(v) for k, v in props.items()}
        ap = raw.get("additionalProperties")
        self.additional: _Node | None = _Node(ap) if isinstance(ap, Mapping) else None
        it = raw.get("items")
        self.items: _Node | None = _Node(it) if isinstance(it, Mapping) else None
        self.all_of: list[_Node] = [_Node(s) for s in raw.get("allOf") or ()]
        self.any_of: list[_Node] = [_Node(s) for s in raw.get("anyOf") or ()]
        self.one_of: list[_Node] = [_Node(s) for s in raw.get("oneOf") or ()]
        self.not_: _Node | None = _Node(raw["not"]) if isinstance(raw.get("not"), Mapping) else None
        self.rules: list[_Rule] = [_Rule(r) for r in raw.get("x-kubernetes-validations") or ()]
        children = [*self.properties.values(), *(c for c in (self.additional, self.items) if c)]
        self.has_rules_below: bool = bool(self.rules) or any(c.has_rules_below for c in children)
        self.has_defaults_below: bool = any(c.has_default or c.has_defaults_below for c in children)
        self.has_embedded_below: bool = any(c.embedded or c.has_embedded_below for c in children)
        self.has_listtype_below: bool = self.list_type in ("set", "map") or any(c.has_listtype_below for c in children)


def _compile_pattern(src: str) -> re.Pattern[str] | None:
    """RE2 patterns mean the same in Python with ASCII classes; an uncompilable one never matches."""
    try:
        return re.compile(src, re.ASCII)
    except re.error:
        return None


_RX_NOT_RE2 = re.compile(r"\(\?[=!]|\(\?<[=!]|\\[1-9]")


def _re2_error(pattern: str) -> str | None:
    """Why Go's regexp (RE2) would refuse the pattern, or None: no lookaround, no backreferences."""
    m = _RX_NOT_RE2.search(pattern)
    if m:
        if m.group(0).startswith("\\"):
            return f"error parsing regexp: invalid escape sequence: `{m.group(0)}`"
        return f"error parsing regexp: invalid or unsupported Perl syntax: `{m.group(0)}`"
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"error parsing regexp: {exc}"
    return None


_CACHE_LOCK = threading.Lock()
_SCHEMA_CACHE: OrderedDict[int, tuple[Mapping[str, Any], _Node]] = OrderedDict()
_SCHEMA_CACHE_SIZE = 256


def compile_schema(schema: Mapping[str, Any]) -> _Node:
    """Compile (or fetch from the cache) a schema tree.

    The cache is keyed by object identity and holds a reference to the schema, so the key stays
    valid; a schema dict must not be mutated after first use (store a new one instead).
    """
    key = id(schema)
    with _CACHE_LOCK:
        hit = _SCHEMA_CACHE.get(key)
        if hit is not None and hit[0] is schema:
            _SCHEMA_CACHE.move_to_end(key)
            return hit[1]
    node = _Node(schema)
    with _CACHE_LOCK:
        _SCHEMA_CACHE[key] = (schema, node)
        _SCHEMA_CACHE.move_to_end(key)
        while len(_SCHEMA_CACHE) > _SCHEMA_CACHE_SIZE:
            _SCHEMA_CACHE.popitem(last=False)
    return node


# ---------------------------------------------------------------------------------------------
# Pruning and defaulting.


def default_and_prune(schema: Mapping[str, Any], obj: Any) -> Any:
    """Prune unknown fields, drop non-nullable nulls without default, apply defaults.

    ``obj`` is a whole custom resource (the schema is the CRD version's ``openAPIV3Schema``);
    it is modified in place and returned. Defaults are deep-copied into it.
    """
    node = compile_schema(schema)
    _prune(node, obj, True)
    _default(node, obj)
    return obj


def _prune(node: _Node | None, x: Any, resource_root: bool) -> None:
    if node is not None and node.preserve_unknown:
        _skip_prune(node, x)
        return
    if isinstance(x, dict):
        if node is None:
            x.clear()
            return
        embedded = resource_root or node.embedded
        drop: list[str] = []
        for k, v in x.items():
            if embedded and k in _META_FIELDS and (k == "metadata" or isinstance(v, str)):
                continue
            prop = node.properties.get(k)
            if prop is not None:
                if _is_null_to_drop(v, prop):
                    drop.append(k)
                else:
                    _prune(prop, v, prop.embedded)
            elif node.additional is not None:
                _prune(node.additional, v, node.additional.embedded)
            else:
                drop.append(k)
        for k in drop:
            del x[k]
    elif isinstance(x, list):
        item = node.items if node is not None else None
        for v in x:
            _prune(item, v, item.embedded if item is not None else False)


def _skip_prune(node: _Node | None, x: Any) -> None:
    """Under preserve-unknown-fields: keep unknown keys (in list items too), prune inside known ones."""
    if node is None:
        return
    if isinstance(x, dict):
        drop = []
        for k, v in x.items():
            if node.embedded and k in _META_FIELDS:
                continue
            prop = node.properties.get(k)
            if prop is not None:
                if _is_null_to_drop(v, prop):
                    drop.append(k)
                else:
                    _prune(prop, v, prop.embedded)
            elif node.additional is not None:
                _prune(node.additional, v, node.additional.embedded)
        for k in drop:
            del x[k]
    elif isinstance(x, list):
        for v in x:
            _skip_prune(node.items, v)


def _is_null_to_drop(v: Any, prop: _Node) -> bool:
    return v is None and not prop.nullable and not prop.has_default


def _default(node: _Node, x: Any) -> None:
    if isinstance(x, dict):
        if node.has_defaults_below:
            for k, prop in node.properties.items():
                if prop.has_default and (k not in x or (x[k] is None and not prop.nullable)):
                    x[k] = copy.deepcopy(prop.default)
        for k, v in x.items():
            sub = node.properties.get(k)
            if sub is not None:
                if sub.has_defaults_below and v is not None:
                    _default(sub, v)
            elif node.additional is not None:
                ap = node.additional
                if v is None and ap.has_default and not ap.nullable:
                    x[k] = v = copy.deepcopy(ap.default)
                if ap.has_defaults_below and v is not None:
                    _default(ap, v)
    elif isinstance(x, list) and node.items is not None:
        it = node.items
        if not (it.has_default or it.has_defaults_below):
            return
        for i, v in enumerate(x):
            if v is None and it.has_default and not it.nullable:
                x[i] = v = copy.deepcopy(it.default)
            if it.has_defaults_below and v is not None:
                _default(it, v)


def strict_unknown_fields(schema: Mapping[str, Any], obj: Any) -> list[str]:
    """Paths of the fields pruning would drop (``spec.foo``, ``spec.items[0].bar``), unmodified obj.

    The server answers ``fieldValidation=Strict`` with
    ``strict decoding error: unknown field "spec.foo", unknown field "spec.bar"``.
    """
    out: list[str] = []
    _unknown(compile_schema(schema), obj, "", True, out)
    return out


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _unknown(node: _Node | None, x: Any, path: str, resource_root: bool, out: list[str]) -> None:
    if node is not None and node.preserve_unknown:
        _unknown_skip(node, x, path, out)
        return
    if isinstance(x, dict):
        if node is None:
            out.extend(_join(path, k) for k in x)
            return
        embedded = resource_root or node.embedded
        for k, v in x.items():
            if embedded and k in _META_FIELDS and (k == "metadata" or isinstance(v, str)):
                continue
            prop = node.properties.get(k)
            if prop is not None:
                _unknown(prop, v, _join(path, k), prop.embedded, out)
            elif node.additional is not None:
                _unknown(node.additional, v, _join(path, k), node.additional.embedded, out)
            elif not (resource_root and k in _META_FIELDS and not path):
                out.append(_join(path, k))
    elif isinstance(x, list):
        item = node.items if node is not None else None
        for i, v in enumerate(x):
            _unknown(item, v, f"{path}[{i}]", item.embedded if item is not None else False, out)


def _unknown_skip(node: _Node | None, x: Any, path: str, out: list[str]) -> None:
    if node is None:
        return
    if isinstance(x, dict):
        for k, v in x.items():
            if node.embedded and k in _META_FIELDS:
                continue
            prop = node.properties.get(k)
            if prop is not None:
                _unknown(prop, v, _join(path, k), prop.embedded, out)
            elif node.additional is not None:
                _unknown(node.additional, v, _join(path, k), node.additional.embedded, out)
    elif isinstance(x, list):
        for i, v in enumerate(x):
            _unknown_skip(node.items, v, f"{path}[{i}]", out)


# ---------------------------------------------------------------------------------------------
# OpenAPI value validation (kube-openapi's SchemaValidator, as apiextensions converts it).


def validate(schema: Mapping[str, Any], obj: Any, old: Any | None = None, path: str = "",
             after_schema: Sequence[FieldError] = ()) -> list[FieldError]:
    """Validate ``obj`` (already pruned and defaulted) against ``schema``; ``old`` on update.

    Returns the causes the real server would return, in the order it produces them: schema
    errors, list-type uniqueness errors, then CEL rule errors (or one "rules were not checked"
    cause when an earlier error is blocking). ``path`` prefixes field paths, for validating a
    sub-tree (``validate(spec_schema, spec, path="spec")``). On update, list-type errors are
    reported only if the old object had none (the server ratchets them). ``after_schema`` are the
    causes the resource's validator adds right after the schema's (the scale subresource's checks,
    customResourceValidator.ValidateScaleSpec/ValidateScaleStatus), never ratcheted.
    """
    node = compile_schema(schema)
    errs: list[FieldError] = []
    _validate_node(node, obj, path, errs)
    if old is not None and errs and not path:
        errs = _ratchet(errs, obj, old)
    errs.extend(after_schema)
    if node.has_embedded_below:
        _validate_embedded(node, obj, path, errs)
    _validate_lists_ratcheted(node, obj, old, path, errs)
    _validate_rules(node, obj, old, path, errs)
    return errs


def validate_status(schema: Mapping[str, Any], obj: Any, old: Any,
                    after_schema: Sequence[FieldError] = ()) -> list[FieldError]:
    """Validate a write to the ``/status`` subresource as the server does.

    The status schema alone validates ``obj["status"]``: messages name paths relative to it
    (``conditions[0].reason in body ...``) while causes are on ``status.<path>``, and errors
    without a path land on ``status``. List types and CEL rules are checked on the whole object.
    """
    node = compile_schema(schema)
    errs: list[FieldError] = []
    status_node = node.properties.get("status")
    if isinstance(obj, Mapping) and "status" in obj and status_node is not None:
        sub: list[FieldError] = []
        _validate_node(status_node, obj["status"], "", sub)
        sub = [FieldError(e.type, "status" if e.field == _NIL_PATH else f"status.{e.field}", e.message) for e in sub]
        errs.extend(_ratchet(sub, obj, old))
    errs.extend(after_schema)
    _validate_lists_ratcheted(node, obj, old, "", errs)
    _validate_rules(node, obj, old, "", errs)
    return errs


_NO_VALUE = object()


def _value_at(obj: Any, parts: list[str]) -> Any:
    for part in parts:
        if not isinstance(obj, Mapping) or part not in obj:
            return _NO_VALUE
        obj = obj[part]
    return obj


def _ratchet(errs: list[FieldError], obj: Any, old: Any) -> list[FieldError]:
    """CRDValidationRatcheting: on update, a schema error of a value the update left unchanged is dropped
    (for Required, the object missing the field). Errors inside lists, and those without a field, stay."""
    out = []
    for e in errs:
        if e.field in (_NIL_PATH, "status") or "[" in e.field:
            out.append(e)
            continue
        parts = e.field.split(".")
        if e.type == REQUIRED:
            parts = parts[:-1]
        new_v, old_v = _value_at(obj, parts), _value_at(old, parts)
        if not parts or new_v is _NO_VALUE or old_v is _NO_VALUE or not _json_equal(new_v, old_v):
            out.append(e)
    return out


def _validate_lists_ratcheted(node: _Node, obj: Any, old: Any, path: str, errs: list[FieldError]) -> None:
    if not node.has_listtype_below:
        return
    new_errs: list[FieldError] = []
    _validate_lists(node, obj, path, new_errs)
    if new_errs and old is not None:
        old_errs: list[FieldError] = []
        _validate_lists(node, old, path, old_errs)
        if old_errs:
            return
    errs.extend(new_errs)


def _validate_rules(node: _Node, obj: Any, old: Any, path: str, errs: list[FieldError]) -> None:
    if not node.has_rules_below:
        return
    if any(e.type in _BLOCKING for e in errs):
        errs.append(FieldError(INVALID, _NIL_PATH, _body("Invalid value", None, _BLOCKED_MESSAGE)))
    else:
        _cel_walk(node, obj, old, path, errs, path == "")


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list | tuple):
        return "array"
    if isinstance(v, Mapping):
        return "object"
    return type(v).__name__


def _json_equal(a: Any, b: Any) -> bool:
    """Go reflect.DeepEqual after numeric conversion: bools never equal numbers.

    Iterative, with its own stack: a stored value may nest deeper than Python's recursion limit.
    """
    pending = [(a, b)]
    while pending:
        x, y = pending.pop()
        if isinstance(x, bool) or isinstance(y, bool):
            if not (isinstance(x, bool) and isinstance(y, bool) and x == y):
                return False
        elif isinstance(x, int | float) and isinstance(y, int | float):
            if x != y:
                return False
        elif isinstance(x, Mapping) and isinstance(y, Mapping):
            if x.keys() != y.keys():
                return False
            pending.extend((x[k], y[k]) for k in x)
        elif isinstance(x, list | tuple) and isinstance(y, list | tuple):
            if len(x) != len(y):
                return False
            pending.extend(zip(x, y, strict=True))
        elif type(x) is not type(y) or x != y:
            return False
    return True


def _is_json_integer(f: float) -> bool:
    """swag.IsFloat64AJSONInteger."""
    if math.isnan(f) or math.isinf(f) or abs(f) > 2**53:
        return False
    if f == int(f):
        return True
    g = float(int(f))
    diff = abs(f - g)
    return diff / min(abs(f) + abs(g), 1.7976931348623157e308) < 1e-9


def _validate_node(node: _Node, data: Any, path: str, errs: list[FieldError]) -> None:
    if data is None:
        if node.type_set and not node.nullable:
            errs.append(_type_invalid(path, "null", f'{path} in body must be of type {node.type_names}: "null"'))
        if node.enum is not None and not node.nullable and None not in node.enum:
            errs.append(_not_supported(path, None, node.enum))
        return
    kind = _kind(data)
    if node.type_set and kind not in node.type_set:
        ok = (kind == "number" and "integer" in node.type_set and _is_json_integer(data)) or (
            kind == "integer" and "number" in node.type_set
        )
        if not ok:
            errs.append(
                _type_invalid(path, kind, f"{path} in body must be of type {node.type_names}: {_go_quote(kind)}")
            )
    if node.all_of or node.any_of or node.one_of or node.not_ is not None:
        _validate_props(node, data, path, errs)
    if kind == "string":
        _validate_string(node, data, path, errs)
    elif kind in ("integer", "number"):
        _validate_number(node, data, path, errs)
    elif kind == "array":
        _validate_array(node, data, path, errs)
    if node.enum is not None and not any(_json_equal(data, e) for e in node.enum):
        errs.append(_not_supported(path, data, node.enum))
    if kind == "object":
        _validate_object(node, data, path, errs)


def _composite(path: str, detail: str) -> FieldError:
    """kube-openapi's composite errors (anyOf, oneOf, allOf, not, number ranges) carry no field
    name: the server reports them on the validated root (``<nil>``), valued ``""``."""
    return _invalid("", "", detail)


def _validate_props(node: _Node, data: Any, path: str, errs: list[FieldError]) -> None:
    """allOf/anyOf/oneOf/not as kube-openapi checks them: one composite error, plus the errors of
    the first failing branch (anyOf, oneOf) or of every branch (allOf)."""
    quoted = _go_quote(path)
    if node.any_of:
        best: list[FieldError] | None = None
        for sub in node.any_of:
            trial: list[FieldError] = []
            _validate_node(sub, data, path, trial)
            if not trial:
                best = None
                break
            if best is None:
                best = trial
        else:
            errs.append(_composite(path, f"{quoted} must validate at least one schema (anyOf)"))
        errs.extend(best or ())
    if node.one_of:
        passing = 0
        best = None
        for sub in node.one_of:
            trial = []
            _validate_node(sub, data, path, trial)
            if not trial:
                passing += 1
            elif best is None and passing == 0:
                best = trial
        if passing != 1:
            found = "Found none valid" if passing == 0 else f"Found {passing} valid alternatives"
            errs.append(_composite(path, f"{quoted} must validate one and only one schema (oneOf). {found}"))
            if passing == 0:
                errs.extend(best or ())
    if node.all_of:
        passing = 0
        for sub in node.all_of:
            trial = []
            _validate_node(sub, data, path, trial)
            passing += not trial
            errs.extend(trial)
        if passing != len(node.all_of):
            none = ". None validated" if passing == 0 else ""
            errs.append(_composite(path, f"{quoted} must validate all the schemas (allOf){none}"))
    if node.not_ is not None:
        trial = []
        _validate_node(node.not_, data, path, trial)
        if not trial:
            errs.append(_composite(path, f"{quoted} must not validate the schema (not)"))


def _validate_string(node: _Node, data: str, path: str, errs: list[FieldError]) -> None:
    if node.max_length is not None and len(data) > node.max_length:
        errs.append(_too_long(path, node.max_length))
    elif node.min_length is not None and len(data) < node.min_length:
        errs.append(_invalid(path, data, f"{path} in body should be at least {node.min_length} chars long"))
    elif node.pattern_src is not None and (node.pattern is None or node.pattern.search(data) is None):
        errs.append(_invalid(path, data, f"{path} in body should match '{node.pattern_src}'"))
    if node.format and not node.int_or_string:
        check = _FORMATS.get(node.format)
        if check is not None and not check(data):
            errs.append(_type_invalid(path, data, f"{path} in body must be of type {node.format}: {_go_quote(data)}"))


def _bound(value: Any, bound: float) -> str:
    """kube-openapi compares ints against int64(bound), floats against the float bound."""
    return str(int(bound)) if isinstance(value, int) else _go_float(float(bound))


_INT_RANGES = {"int32": (-(2**31), 2**31 - 1)}
_INT64 = (-(2**63), 2**63 - 1)
_FLOAT32_MAX = 3.4028234663852886e38


def _in_range(node: _Node, data: float) -> bool:
    """IsValueValidAgainstRange: the value, printed as Go prints it, parses as the type and format."""
    if node.type == "integer":
        if isinstance(data, float):
            if not data.is_integer():
                return False
            data = int(data)
        lo, hi = _INT_RANGES.get(node.format, _INT64)
        return lo <= data <= hi
    if node.format == "float":
        return math.isinf(data) or abs(float(data)) <= _FLOAT32_MAX
    return True


def _validate_number(node: _Node, data: float, path: str, errs: list[FieldError]) -> None:
    is_int = isinstance(data, int)
    if node.type in ("integer", "number") and not _in_range(node, data):
        kept = node.format in ("int32", "int64", "float", "double")  # the server strips other formats
        fmt = f"with format {node.format}" if kept else "(default format)"
        errs.append(_composite(path, f"Checked value must be of type {node.type} {fmt} in {path}"))
    if node.multiple_of is not None and node.multiple_of > 0:
        if is_int and int(node.multiple_of) > 0:
            bad = data % int(node.multiple_of) != 0
        else:
            f = node.multiple_of
            bad = not _is_json_integer((1 / f * data) if f < 1 else (data / f))
        if bad:
            errs.append(
                _invalid(path, data, f"{path} in body should be a multiple of {_bound(data, node.multiple_of)}")
            )
    if node.maximum is not None:
        mx = int(node.maximum) if is_int else float(node.maximum)
        if data >= mx if node.exclusive_maximum else data > mx:
            rel = "less than" if node.exclusive_maximum else "less than or equal to"
            errs.append(_invalid(path, data, f"{path} in body should be {rel} {_bound(data, node.maximum)}"))
    if node.minimum is not None:
        mn = int(node.minimum) if is_int else float(node.minimum)
        if data <= mn if node.exclusive_minimum else data < mn:
            rel = "greater than" if node.exclusive_minimum else "greater than or equal to"
            errs.append(_invalid(path, data, f"{path} in body should be {rel} {_bound(data, node.minimum)}"))


def _validate_array(node: _Node, data: list[Any], path: str, errs: list[FieldError]) -> None:
    if node.items is not None:
        it = node.items
        for i, v in enumerate(data):
            _validate_node(it, v, f"{path}[{i}]", errs)
    n = len(data)
    if node.min_items is not None and n < node.min_items:
        errs.append(_invalid(path, n, f"{path} in body should have at least {node.min_items} items"))
    if node.max_items is not None and n > node.max_items:
        errs.append(_too_many(path, n, node.max_items))


def _validate_object(node: _Node, data: Mapping[str, Any], path: str, errs: list[FieldError]) -> None:
    n = len(data)
    if node.min_properties is not None and n < node.min_properties:
        errs.append(_invalid(path, n, f"{path} in body should have at least {node.min_properties} properties"))
        return
    if node.max_properties is not None and n > node.max_properties:
        errs.append(_too_many(path, n, node.max_properties))
        return
    props = node.properties
    if node.additional is not None:
        ap = node.additional
        for k, v in data.items():
            if k not in props:
                _validate_node(ap, v, _join(path, k), errs)
    for k, sub in props.items():
        if k in data:
            _validate_node(sub, data[k], _join(path, k), errs)
    for k in node.required:
        if k not in data:
            errs.append(_required(_join(path, k)))


# String formats the apiextensions server keeps (others are stripped and not checked).
_RX_DATE_TIME = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:?\d{2})?$")
_RX_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
_RX_HOSTNAME = re.compile(
    r"^(?=.{1,255}$)[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$"
)
_RX_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_RX_MAC = re.compile(r"^([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}$")
_RX_DURATION = re.compile(r"^[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+$")
_RX_GO_DURATION = re.compile(r"^[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+$|^[-+]?0$")


def _is_date_time(s: str) -> bool:
    m = _RX_DATE_TIME.match(s)
    if not m:
        return False
    try:
        _dt.datetime(int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), min(int(m[6]), 59))
    except ValueError:
        return False
    return True


def _is_date(s: str) -> bool:
    try:
        _dt.date.fromisoformat(s)
    except ValueError:
        return False
    return len(s) == 10


def _is_ip(version: int) -> Callable[[str], bool]:
    def check(s: str) -> bool:
        try:
            return ipaddress.ip_address(s).version == version
        except ValueError:
            return False

    return check


def _is_cidr(s: str) -> bool:
    try:
        ipaddress.ip_network(s, strict=False)
    except ValueError:
        return False
    return "/" in s


def _is_byte(s: str) -> bool:
    try:
        base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _is_uri(s: str) -> bool:
    try:
        u = urllib.parse.urlparse(s)
    except ValueError:
        return False
    return bool(u.scheme) or s.startswith("/")


_FORMATS: dict[str, Callable[[str], bool]] = {
    "date-time": _is_date_time,
    "datetime": _is_date_time,
    "date": _is_date,
    "uuid": lambda s: bool(_RX_UUID.match(s)),
    "uuid3": lambda s: bool(_RX_UUID.match(s)),
    "uuid4": lambda s: bool(_RX_UUID.match(s)),
    "uuid5": lambda s: bool(_RX_UUID.match(s)),
    "ipv4": _is_ip(4),
    "ipv6": _is_ip(6),
    "cidr": _is_cidr,
    "mac": lambda s: bool(_RX_MAC.match(s)),
    "hostname": lambda s: len(s) <= 255 and bool(_RX_HOSTNAME.match(s)),
    "email": lambda s: bool(_RX_EMAIL.match(s)),
    "byte": _is_byte,
    "duration": lambda s: bool(_RX_GO_DURATION.match(s) or _RX_DURATION.match(s)),
    "uri": _is_uri,
}


# ---------------------------------------------------------------------------------------------
# x-kubernetes-embedded-resource: apiVersion and kind are required (schemaobjectmeta).

_RX_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_MSG = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
    "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
    "regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)


def _validate_embedded(node: _Node, data: Any, path: str, errs: list[FieldError]) -> None:
    if isinstance(data, Mapping):
        if node.embedded:
            _validate_embedded_resource(data, path, errs)
        for k, v in data.items():
            sub = node.properties.get(k)
            if sub is None and k not in node.properties:
                sub = node.additional
            if sub is not None and (sub.embedded or sub.has_embedded_below):
                _validate_embedded(sub, v, _child(path, k), errs)
    elif isinstance(data, list) and node.items is not None:
        it = node.items
        if it.embedded or it.has_embedded_below:
            for i, v in enumerate(data):
                _validate_embedded(it, v, f"{path}[{i}]", errs)


def _validate_embedded_resource(x: Mapping[str, Any], path: str, errs: list[FieldError]) -> None:
    for key in ("apiVersion", "kind"):
        if key not in x:
            errs.append(_required(_child(path, key), "must not be empty"))
    api_version = x.get("apiVersion")
    if "apiVersion" in x:
        if not isinstance(api_version, str):
            errs.append(_invalid(_child(path, "apiVersion"), api_version, "must be a string"))
        elif not api_version:
            errs.append(_invalid(_child(path, "apiVersion"), api_version, "must not be empty"))
        elif api_version.count("/") > 1:
            detail = f"unexpected GroupVersion string: {api_version}"
            errs.append(_invalid(_child(path, "apiVersion"), api_version, detail))
    kind = x.get("kind")
    if "kind" in x:
        if not isinstance(kind, str):
            errs.append(_invalid(_child(path, "kind"), kind, "must be a string"))
        elif not kind:
            errs.append(_invalid(_child(path, "kind"), kind, "must not be empty"))
        elif len(kind) > 63 or not _RX_DNS1035.match(kind.lower()):
            detail = "may have mixed case, but should otherwise match: " + (
                "must be no more than 63 characters" if len(kind) > 63 else _DNS1035_MSG
            )
            errs.append(_invalid(_child(path, "kind"), kind, detail))


# ---------------------------------------------------------------------------------------------
# x-kubernetes-list-type set/map uniqueness.


def _validate_lists(node: _Node, data: Any, path: str, errs: list[FieldError]) -> None:
    if isinstance(data, Mapping):
        if node.additional is not None and node.additional.has_listtype_below:
            for k, v in data.items():
                if k not in node.properties:
                    _validate_lists(node.additional, v, f"{path}[{k}]" if path else f"[{k}]", errs)
        for k, sub in node.properties.items():
            if sub.has_listtype_below and k in data:
                _validate_lists(sub, data[k], _join(path, k), errs)
    elif isinstance(data, list):
        if node.list_type == "set":
            for i in _non_unique(data):
                errs.append(_duplicate(f"{path}[{i}]", data[i]))
        elif node.list_type == "map":
            errs.extend(_validate_list_map(node, data, path))
        if node.items is not None and node.items.has_listtype_below:
            for i, v in enumerate(data):
                _validate_lists(node.items, v, f"{path}[{i}]", errs)


_UNSPECIFIED = object()


def _set_key(x: Any) -> Any:
    if x is _UNSPECIFIED:
        return ("unspecified",)
    if isinstance(x, dict | list):
        return ("compound", json.dumps(x, sort_keys=True, separators=(",", ":")))
    return ("scalar", type(x).__name__, x)


def _non_unique(values: list[Any]) -> list[int]:
    """Indices of the second appearance of each repeated value (as the server reports them)."""
    seen: dict[Any, int] = {}
    out: list[int] = []
    for i, x in enumerate(values):
        key = _set_key(x)
        times = seen.get(key, 0)
        seen[key] = times + 1
        if times == 1:
            out.append(i)
    return out


def _validate_list_map(node: _Node, data: list[Any], path: str) -> list[FieldError]:
    for i, x in enumerate(data):
        if x is not None and not isinstance(x, Mapping):
            return [_invalid(f"{path}[{i}]", x, "must be an object for an array of list-type map")]
    if len(data) <= 1 or not node.list_map_keys:
        return []
    keys: list[Any] = []
    if len(node.list_map_keys) == 1:
        kf = node.list_map_keys[0]
        for x in data:
            keys.append(x[kf] if isinstance(x, Mapping) and kf in x else _UNSPECIFIED)
        out = []
        for i in _non_unique(keys):
            out.append(_duplicate(f"{path}[{i}]", {} if keys[i] is _UNSPECIFIED else {kf: keys[i]}))
        return out
    for x in data:
        keys.append({k: x[k] for k in node.list_map_keys if isinstance(x, Mapping) and k in x})
    return [_duplicate(f"{path}[{i}]", keys[i]) for i in _non_unique(keys)]


# ---------------------------------------------------------------------------------------------
# CEL: x-kubernetes-validations.

_CEL_ENV = nesting.celpy_environment()
_CEL_LOCK = threading.Lock()
_CEL_CACHE: dict[str, _CompiledExpr] = {}


class _CompiledExpr:
    """A parsed CEL expression and the facts about it the validator needs."""

    __slots__ = ("error", "is_self_equals_old", "program", "true_if_unchanged", "uses_old_self")

    def __init__(self, text: str) -> None:
        self.error: str | None = None
        self.program: Any = None
        self.uses_old_self = False
        self.is_self_equals_old = _strip_parens(_normalized(text)) in _SELF_EQUALS_OLD
        self.true_if_unchanged = self.is_self_equals_old
        try:
            ast = _CEL_ENV.compile(text)
        except celpy.CELParseError as exc:
            self.error = _parse_error_text(exc)
            return
        idents: set[str] = set()
        calls: set[str] = set()
        bound: set[str] = set()
        for sub in ast.iter_subtrees():
            if sub.data == "ident" and sub.children:
                idents.add(str(sub.children[0]))
            elif sub.data == "ident_arg" and sub.children:
                calls.add(str(sub.children[0]))
            elif sub.data == "member_dot_arg" and len(sub.children) >= 2:
                calls.add(str(sub.children[1]))
                if str(sub.children[1]) in _MACROS and len(sub.children) >= 3:
                    first = sub.children[2].children[0] if sub.children[2].children else None
                    if first is not None:
                        bound.update(str(t.children[0]) for t in first.iter_subtrees() if t.data == "ident")
        self.uses_old_self = "oldSelf" in idents
        self.true_if_unchanged = self.is_self_equals_old or _leading_disjunct_is_self_equals_old(ast, text)
        unknown_vars = sorted(i for i in idents - bound - {"self", "oldSelf"} if i not in _KNOWN_IDENTS)
        unknown_calls = sorted(c for c in calls if c not in _KNOWN_FUNCTIONS)
        if unknown_vars:
            self.error = f"undeclared reference to '{unknown_vars[0]}' (in container '')"
            return
        if unknown_calls:
            self.error = f"undeclared reference to '{unknown_calls[0]}' (in container '')"
            return
        self.program = _CEL_ENV.program(ast, functions=_K8S_FUNCTIONS)


_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
_SELF_EQUALS_OLD = ("self==oldSelf", "oldSelf==self")


def _normalized(text: str) -> str:
    return "".join(text.split())


def _leading_disjunct_is_self_equals_old(ast: Any, text: str) -> bool:
    """True for ``self == oldSelf || ...``: such a rule holds whenever the value is unchanged.

    celpy evaluates both sides of ``||``; recognising the idiom spares evaluating the (often
    long) right-hand side on every update that leaves the value alone.
    """
    node = ast
    if node.data == "expr":
        if len(node.children) != 1:
            return False
        node = node.children[0]
    if node.data != "conditionalor" or len(node.children) != 2:
        return False
    while node.data == "conditionalor" and len(node.children) == 2:
        node = node.children[0]
    meta = getattr(node, "meta", None)
    if meta is None or getattr(meta, "empty", True):
        return False
    return _strip_parens(_normalized(text[meta.start_pos : meta.end_pos])) in _SELF_EQUALS_OLD


def _strip_parens(s: str) -> str:
    while s.startswith("(") and s.endswith(")"):
        depth = 0
        for i, ch in enumerate(s):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and i < len(s) - 1:
                return s
        s = s[1:-1]
    return s


def _parse_error_text(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return f"Syntax error: {text}" if text else "Syntax error"


def _compiled(text: str) -> _CompiledExpr:
    hit = _CEL_CACHE.get(text)
    if hit is None:
        hit = _CompiledExpr(text)
        with _CEL_LOCK:
            _CEL_CACHE[text] = hit
    return hit


class _Rule:
    """One x-kubernetes-validations entry."""

    __slots__ = ("field_path", "message", "message_expression", "optional_old_self", "reason", "rule")

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.rule: str = raw.get("rule") or ""
        self.message: str = raw.get("message") or ""
        self.message_expression: str = raw.get("messageExpression") or ""
        self.reason: str = raw.get("reason") or ""
        self.optional_old_self = bool(raw.get("optionalOldSelf"))
        fp = raw.get("fieldPath") or ""
        self.field_path: str = _normalize_field_path(fp) if fp else ""

    @property
    def error_string(self) -> str:
        return self.message.strip() if self.message else self.rule.strip()

    @property
    def default_message(self) -> str:
        return self.message.strip() if self.message else f"failed rule: {self.rule.strip()}"


_RX_FP_TOKEN = re.compile(r"\.([^.\[\]]+)|\['((?:[^'\\]|\\.)*)'\]")


def _normalize_field_path(fp: str) -> str:
    """``.spec.a['b.c']`` -> ``spec.a[b.c]``, as field.Path prints it."""
    out = ""
    pos = 0
    while pos < len(fp):
        m = _RX_FP_TOKEN.match(fp, pos)
        if not m:
            return fp.lstrip(".")
        if m.group(1) is not None:
            out = _join(out, m.group(1))
        else:
            out += "[" + re.sub(r"\\(.)", r"\1", m.group(2)) + "]"
        pos = m.end()
    return out


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _cel_walk(
    node: _Node, data: Any, old: Any, path: str, errs: list[FieldError], root: bool, same: bool | None = None
) -> None:
    """Evaluate the rules of node and below; ``same`` is True when data is known to equal old."""
    if data is None:
        return
    if node.rules:
        same = _eval_rules(node, data, old, path, errs, root, same)
    child_same = True if same else None
    if isinstance(data, Mapping):
        # Children of an atomic map have no old value to correlate with.
        old_map = old if isinstance(old, Mapping) and node.map_type != "atomic" else None
        ap = node.additional
        if ap is not None and ap.has_rules_below:
            for k, v in data.items():
                if k not in node.properties:
                    ov = old_map.get(k) if old_map is not None else None
                    _cel_walk(ap, v, ov, f"{path}[{k}]" if path else f"[{k}]", errs, False, child_same)
        for k, v in data.items():
            sub = node.properties.get(k)
            if sub is not None and sub.has_rules_below:
                ov = old_map.get(k) if old_map is not None else None
                _cel_walk(sub, v, ov, _child(path, k), errs, False, child_same)
    elif isinstance(data, list) and node.items is not None and node.items.has_rules_below:
        old_items = _correlate_list(node, data, old)
        for i, v in enumerate(data):
            _cel_walk(node.items, v, old_items[i], f"{path}[{i}]", errs, False, child_same)


def _correlate_list(node: _Node, data: list[Any], old: Any) -> list[Any]:
    """Only list-type=map items have an old value (matched by their key fields)."""
    if node.list_type != "map" or not node.list_map_keys or not isinstance(old, list):
        return [None] * len(data)
    keys = node.list_map_keys

    def key_of(x: Any) -> Any:
        if not isinstance(x, Mapping):
            return None
        return json.dumps([x.get(k) for k in keys], sort_keys=True)

    by_key = {key_of(o): o for o in old if isinstance(o, Mapping)}
    return [by_key.get(key_of(x)) for x in data]


def _eval_rules(
    node: _Node, data: Any, old: Any, path: str, errs: list[FieldError], root: bool, same: bool | None
) -> bool | None:
    """Evaluate node's rules; returns whether data equals old when that was worked out."""
    type_value = node.type
    self_val: Any = None
    old_val: Any = None
    converted = False
    unchanged: bool | None = same if old is not None else None
    for rule in node.rules:
        compiled = _compiled(rule.rule)
        if compiled.error is not None:
            errs.append(_invalid(path, type_value, f"rule compile error: {compiled.error}"))
            continue
        if compiled.program is None:
            continue
        if compiled.uses_old_self and old is None and not rule.optional_old_self:
            continue
        fast_path = compiled.true_if_unchanged and not rule.optional_old_self
        if old is not None and (not compiled.uses_old_self or fast_path):
            if unchanged is None:
                unchanged = _json_equal(data, old)
            # Unchanged value: a rule without oldSelf is ratcheted (the real server only warns),
            # and `self == oldSelf [|| ...]` holds.
            if unchanged:
                continue
            # The immutability idiom on a changed value fails, without the interpreter.
            if fast_path and compiled.is_self_equals_old and not rule.message_expression:
                _report_failure(node, rule, data, path, errs, None)
                continue
        key = _memo_key(node, rule, data, old if compiled.uses_old_self else _ABSENT)
        outcome = _RULE_MEMO.get(key) if key is not None else None
        activation: dict[str, Any] | None = None
        if outcome is None:
            if not converted:
                self_val = _to_cel(_resource_root_view(data) if root else data, node)
                if old is not None:
                    old_val = _to_cel(_resource_root_view(old) if root else old, node)
                converted = True
            activation = _activation(compiled, rule, self_val, old_val, old is not None)
            result, err = _run(compiled, activation)
            if err is not None:
                outcome = err
            elif result is True or (isinstance(result, ct.BoolType) and bool(result)):
                outcome = True
            elif not isinstance(result, bool | ct.BoolType):
                outcome = "no such overload"
            else:
                outcome = False
            if key is not None:
                if len(_RULE_MEMO) >= _RULE_MEMO_SIZE:
                    _RULE_MEMO.clear()
                _RULE_MEMO[key] = outcome
        if outcome is True:
            continue
        if isinstance(outcome, str):
            errs.append(_invalid(path, type_value, f"{outcome} evaluating rule: {rule.error_string}"))
            continue
        if rule.message_expression and activation is None:
            if not converted:
                self_val = _to_cel(_resource_root_view(data) if root else data, node)
                if old is not None:
                    old_val = _to_cel(_resource_root_view(old) if root else old, node)
                converted = True
            activation = _activation(compiled, rule, self_val, old_val, old is not None)
        _report_failure(node, rule, data, path, errs, activation)
    return unchanged


def _activation(compiled: _CompiledExpr, rule: _Rule, self_val: Any, old_val: Any, has_old: bool) -> dict[str, Any]:
    activation: dict[str, Any] = {"self": self_val}
    if compiled.uses_old_self:
        activation["oldSelf"] = _Optional(old_val, has_old) if rule.optional_old_self else old_val
    return activation


# Rule outcomes for small values: CEL rules are pure, so (schema node, rule, self, oldSelf) decides
# the result. It spares the interpreter (~0.2 ms a rule) on the many writes that repeat values.
_ABSENT = object()
_RULE_MEMO: dict[tuple[Any, ...], bool | str] = {}
_RULE_MEMO_SIZE = 4096
_MEMO_MAX_NODES = 64
_MEMO_MAX_STRING = 512


def _memo_key(node: _Node, rule: _Rule, data: Any, old: Any) -> tuple[Any, ...] | None:
    budget = [_MEMO_MAX_NODES]
    frozen = _freeze(data, budget)
    if frozen is None:
        return None
    frozen_old = ("absent",) if old is _ABSENT or old is None else _freeze(old, budget)
    if frozen_old is None:
        return None
    return (node, rule.rule, rule.optional_old_self, frozen, frozen_old)


def _freeze(v: Any, budget: list[int]) -> Any:
    """A hashable, type-exact image of a small JSON value; None when too large to be worth it."""
    budget[0] -= 1
    if budget[0] < 0:
        return None
    if v is None:
        return ("n",)
    if isinstance(v, bool):
        return ("b", v)
    if isinstance(v, int):
        return ("i", v)
    if isinstance(v, float):
        return ("f", v)
    if isinstance(v, str):
        return ("s", v) if len(v) <= _MEMO_MAX_STRING else None
    if isinstance(v, list):
        items = []
        for x in v:
            fx = _freeze(x, budget)
            if fx is None:
                return None
            items.append(fx)
        return ("l", tuple(items))
    if isinstance(v, Mapping):
        pairs = []
        for k in sorted(v):
            fx = _freeze(v[k], budget)
            if fx is None:
                return None
            pairs.append((k, fx))
        return ("m", tuple(pairs))
    return None


def _report_failure(
    node: _Node, rule: _Rule, data: Any, path: str, errs: list[FieldError], activation: dict[str, Any] | None
) -> None:
    """The cause for a rule that evaluated to false."""
    fld = _child(path, rule.field_path) if rule.field_path else path
    detail = ""
    if rule.message_expression and activation is not None:
        detail = _message_expression(rule.message_expression, activation)
    if not detail:
        detail = rule.default_message
    value: Any = _OMIT if node.type in ("object", "array") else data
    errs.append(_error_for_reason(fld, value, detail, rule.reason))


def _error_for_reason(path: str, value: Any, detail: str, reason: str) -> FieldError:
    if reason == FORBIDDEN:
        return _forbidden(path, detail)
    if reason == REQUIRED:
        return _required(path, detail)
    if reason == DUPLICATE:
        return _duplicate(path, value)
    return _invalid(path, value, detail)


def _message_expression(text: str, activation: dict[str, Any]) -> str:
    """The evaluated messageExpression, or "" when it fails (the server then uses message)."""
    compiled = _compiled(text)
    if compiled.program is None:
        return ""
    result, err = _run(compiled, activation)
    if err is not None or not isinstance(result, str):
        return ""
    msg = str(result).strip()
    if not msg or "\n" in msg or len(msg) > 5 * 1024:
        return ""
    return msg


def _run(compiled: _CompiledExpr, activation: dict[str, Any]) -> tuple[Any, str | None]:
    try:
        result = compiled.program.evaluate(activation)
    except CELEvalError as exc:
        return None, _eval_error_text(exc)
    except Exception as exc:  # noqa: BLE001 - whatever a rule's evaluation raises is that rule's error
        # cel-go returns every failure of an evaluation as an error value, which the server reports as the
        # rule's error. celpy (an interpreter of user-written rules over user data) also leaks Python errors
        # of its own (TypeError, RecursionError...): those too are this rule's failed evaluation, not a
        # failed request.
        return None, f"internal error: {type(exc).__name__}"
    if isinstance(result, CELEvalError):
        return None, _eval_error_text(result)
    return result, None


def _eval_error_text(exc: BaseException) -> str:
    """Word celpy's errors like cel-go's (``no such key: x``, ``division by zero``...)."""
    args = exc.args
    msg = str(args[0]) if args else ""
    cause = args[1] if len(args) > 1 else None
    if cause is KeyError or "no such member" in msg or "no such key" in msg:
        m = re.search(r"'([^']*)'", msg)
        return f"no such key: {m.group(1)}" if m else "no such key"
    if cause is ZeroDivisionError:
        return "division by zero"
    if cause is IndexError:
        return "index out of bounds"
    if cause is TypeError or "overload" in msg:
        return "no such overload"
    return msg or "evaluation error"


def _resource_root_view(obj: Any) -> Any:
    """At a resource root CEL sees apiVersion, kind and only metadata.name/generateName."""
    if not isinstance(obj, Mapping):
        return obj
    view = dict(obj)
    meta = obj.get("metadata")
    if isinstance(meta, Mapping):
        view["metadata"] = {k: meta[k] for k in ("name", "generateName") if k in meta}
    return view


# What celpy raises for a string that is no timestamp, duration or base64 text: ValueError (pendulum's
# ParserError, a bad duration, binascii.Error, non-ASCII base64) and, from pendulum - which also reads
# times, durations and intervals, and dates past 9999 - TypeError, AttributeError and OverflowError.
_NOT_OF_ITS_FORMAT = (ValueError, TypeError, AttributeError, OverflowError)


def _to_cel(v: Any, node: _Node | None) -> Any:
    """Convert a JSON value to CEL, typed by its schema node as the server does."""
    if v is None:
        return None
    if node is None or (node.preserve_unknown and not node.properties and node.additional is None):
        return celpy.json_to_cel(v)
    if isinstance(v, bool):
        return ct.BoolType(v)
    if isinstance(v, int):
        return ct.DoubleType(float(v)) if node.type == "number" else ct.IntType(v)
    if isinstance(v, float):
        if node.type == "integer" and v.is_integer():
            return ct.IntType(int(v))
        return ct.DoubleType(v)
    if isinstance(v, str):
        if node.type == "string" and node.format:
            try:
                if node.format in ("date-time", "datetime"):
                    return ct.TimestampType(v)
                if node.format == "duration":
                    return ct.DurationType(v)
                if node.format == "byte":
                    return ct.BytesType(base64.b64decode(v))
            except _NOT_OF_ITS_FORMAT:
                return ct.StringType(v)
        return ct.StringType(v)
    if isinstance(v, list):
        return ct.ListType([_to_cel(x, node.items) for x in v])
    if isinstance(v, Mapping):
        out = {}
        for k, x in v.items():
            sub = node.properties.get(k)
            if sub is None:
                sub = node.additional
            out[ct.StringType(k)] = _to_cel(x, sub) if sub is not None else celpy.json_to_cel(x)
        return ct.MapType(out)
    return celpy.json_to_cel(v)


# ---------------------------------------------------------------------------------------------
# Kubernetes CEL libraries that cel-python lacks.


class _Optional:
    """CEL optional value, used for ``oldSelf`` when ``optionalOldSelf`` is true."""

    __slots__ = ("present", "value")

    def __init__(self, value: Any, present: bool) -> None:
        self.value = value
        self.present = present

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _Optional):
            return self.present == other.present and (not self.present or self.value == other.value)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.present)


class _CelError(Exception):
    """Raised by library functions; surfaces as an ``evaluating rule`` cause."""


def _fn_has_value(o: Any) -> Any:
    if not isinstance(o, _Optional):
        raise _CelError("no such overload")
    return ct.BoolType(o.present)


def _fn_value(o: Any) -> Any:
    if not isinstance(o, _Optional):
        raise _CelError("no such overload")
    if not o.present:
        raise _CelError("optional.none() dereference")
    return o.value


def _fn_or_value(o: Any, alt: Any) -> Any:
    if not isinstance(o, _Optional):
        raise _CelError("no such overload")
    return o.value if o.present else alt


def _fn_index_of(target: Any, x: Any, *start: Any) -> Any:
    if isinstance(target, str):
        offset = int(start[0]) if start else 0
        if offset < 0 or offset > len(target):
            raise _CelError(f"index out of range: {offset}")
        return ct.IntType(target.find(str(x), offset))
    if isinstance(target, list):
        for i, item in enumerate(target):
            if item == x:
                return ct.IntType(i)
        return ct.IntType(-1)
    raise _CelError("no such overload")


def _fn_last_index_of(target: Any, x: Any, *start: Any) -> Any:
    if isinstance(target, str):
        if start:
            return ct.IntType(target.rfind(str(x), 0, int(start[0]) + len(str(x))))
        return ct.IntType(target.rfind(str(x)))
    if isinstance(target, list):
        for i in range(len(target) - 1, -1, -1):
            if target[i] == x:
                return ct.IntType(i)
        return ct.IntType(-1)
    raise _CelError("no such overload")


def _fn_substring(s: Any, start: Any, *end: Any) -> Any:
    a = int(start)
    b = int(end[0]) if end else len(s)
    if a < 0 or b > len(s) or a > b:
        raise _CelError(f"index out of range: {a if a < 0 or a > len(s) else b}")
    return ct.StringType(str(s)[a:b])


def _fn_split(s: Any, sep: Any, *limit: Any) -> Any:
    n = int(limit[0]) if limit else -1
    if n == 0:
        return ct.ListType([])
    parts = str(s).split(str(sep), n - 1) if n > 0 else str(s).split(str(sep))
    return ct.ListType([ct.StringType(p) for p in parts])


def _fn_replace(s: Any, old: Any, new: Any, *limit: Any) -> Any:
    n = int(limit[0]) if limit else -1
    return ct.StringType(str(s).replace(str(old), str(new), n))


def _fn_join(lst: Any, *sep: Any) -> Any:
    return ct.StringType((str(sep[0]) if sep else "").join(str(x) for x in lst))


def _fn_is_sorted(lst: Any) -> Any:
    return ct.BoolType(all(lst[i] <= lst[i + 1] for i in range(len(lst) - 1)))


def _fn_sum(lst: Any) -> Any:
    if not lst:
        return ct.IntType(0)
    total = lst[0]
    for x in lst[1:]:
        total = total + x
    return total


def _fn_extreme(pick: Callable[..., Any]) -> Callable[[Any], Any]:
    def fn(lst: Any) -> Any:
        if not lst:
            raise _CelError("min called on empty list" if pick is min else "max called on empty list")
        return pick(lst)

    return fn


def _fn_find(s: Any, pattern: Any) -> Any:
    m = re.search(str(pattern), str(s))
    return ct.StringType(m.group(0) if m else "")


def _fn_find_all(s: Any, pattern: Any, *limit: Any) -> Any:
    found = [m.group(0) for m in re.finditer(str(pattern), str(s))]
    if limit and int(limit[0]) >= 0:
        found = found[: int(limit[0])]
    return ct.ListType([ct.StringType(x) for x in found])


class _URL:
    """Result of ``url()``."""

    __slots__ = ("parsed",)

    def __init__(self, parsed: urllib.parse.SplitResult) -> None:
        self.parsed = parsed

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _URL) and self.parsed == other.parsed

    def __hash__(self) -> int:
        return hash(self.parsed)


def _parse_url(s: str) -> _URL | None:
    try:
        p = urllib.parse.urlsplit(s)
    except ValueError:
        return None
    if not p.scheme and not s.startswith("/"):
        return None
    if any(c.isspace() for c in s):
        return None
    return _URL(p)


def _fn_url(s: Any) -> Any:
    u = _parse_url(str(s))
    if u is None:
        raise _CelError(f"URL parse error during conversion from string: {s}")
    return u


def _url_part(get: Callable[[urllib.parse.SplitResult], str]) -> Callable[[Any], Any]:
    def fn(u: Any) -> Any:
        if not isinstance(u, _URL):
            raise _CelError("no such overload")
        return ct.StringType(get(u.parsed))

    return fn


def _url_query(u: Any) -> Any:
    if not isinstance(u, _URL):
        raise _CelError("no such overload")
    q = urllib.parse.parse_qs(u.parsed.query, keep_blank_values=True)
    return ct.MapType({ct.StringType(k): ct.ListType([ct.StringType(x) for x in v]) for k, v in q.items()})


class _Quantity:
    """A resource.Quantity as an exact decimal, enough for comparisons and arithmetic."""

    __slots__ = ("value",)

    def __init__(self, value: Decimal) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Quantity) and self.value == other.value

    def __hash__(self) -> int:
        return hash(self.value)


def _parse_quantity(s: str) -> _Quantity | None:
    value = quantity_value(s)
    return None if value is None else _Quantity(value)


def _fn_quantity(s: Any) -> Any:
    q = _parse_quantity(str(s))
    if q is None:
        raise _CelError("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")
    return q


def _q(x: Any) -> _Quantity:
    if isinstance(x, _Quantity):
        return x
    if isinstance(x, int) and not isinstance(x, bool):
        return _Quantity(Decimal(int(x)))
    raise _CelError("no such overload")


def _fn_compare(a: Any, b: Any) -> Any:
    x, y = _q(a).value, _q(b).value
    return ct.IntType((x > y) - (x < y))


def _fn_as_integer(a: Any) -> Any:
    v = _q(a).value
    if v != v.to_integral_value() or abs(v) > 2**63 - 1:
        raise _CelError("cannot convert value to integer")
    return ct.IntType(int(v))


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a library failure into a CEL error value, so `||`/`&&` can absorb it as CEL does."""

    def call(*args: Any) -> Any:
        try:
            return fn(*args)
        except _CelError as exc:
            return CELEvalError(str(exc), _CelError, ())
        except (TypeError, ValueError, AttributeError, IndexError, KeyError, InvalidOperation) as exc:
            return CELEvalError("no such overload", type(exc), exc.args)

    return call


_K8S_LIBRARY: dict[str, Callable[..., Any]] = {
    "charAt": lambda s, i: ct.StringType(str(s)[int(i)] if int(i) < len(s) else ""),
    "indexOf": _fn_index_of,
    "lastIndexOf": _fn_last_index_of,
    "lowerAscii": lambda s: ct.StringType("".join(c.lower() if c.isascii() else c for c in str(s))),
    "upperAscii": lambda s: ct.StringType("".join(c.upper() if c.isascii() else c for c in str(s))),
    "replace": _fn_replace,
    "split": _fn_split,
    "substring": _fn_substring,
    "trim": lambda s: ct.StringType(str(s).strip()),
    "join": _fn_join,
    "reverse": lambda s: ct.StringType(str(s)[::-1]) if isinstance(s, str) else ct.ListType(list(s)[::-1]),
    "isSorted": _fn_is_sorted,
    "sum": _fn_sum,
    "max": _fn_extreme(max),
    "find": _fn_find,
    "findAll": _fn_find_all,
    "url": _fn_url,
    "isURL": lambda s: ct.BoolType(_parse_url(str(s)) is not None),
    "getScheme": _url_part(lambda p: p.scheme),
    "getHost": _url_part(lambda p: p.netloc.rpartition("@")[2]),
    "getHostname": _url_part(lambda p: p.hostname or ""),
    "getPort": _url_part(lambda p: str(p.port) if p.port is not None else ""),
    "getEscapedPath": _url_part(lambda p: p.path),
    "getQuery": _url_query,
    "quantity": _fn_quantity,
    "isQuantity": lambda s: ct.BoolType(_parse_quantity(str(s)) is not None),
    "compareTo": _fn_compare,
    "isLessThan": lambda a, b: ct.BoolType(_q(a).value < _q(b).value),
    "isGreaterThan": lambda a, b: ct.BoolType(_q(a).value > _q(b).value),
    "add": lambda a, b: _Quantity(_q(a).value + _q(b).value),
    "sub": lambda a, b: _Quantity(_q(a).value - _q(b).value),
    "asInteger": _fn_as_integer,
    "isInteger": lambda a: ct.BoolType(_q(a).value == _q(a).value.to_integral_value()),
    "asApproximateFloat": lambda a: ct.DoubleType(float(_q(a).value)),
    "sign": lambda a: ct.IntType((_q(a).value > 0) - (_q(a).value < 0)),
    "dyn": lambda v: v,
    "hasValue": _fn_has_value,
    "value": _fn_value,
    "orValue": _fn_or_value,
}

_NUMBERS = (ct.IntType, ct.UintType, ct.DoubleType)


def _numeric_relation(name: str, op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], Any]:
    """cel-go compares int, uint and double with one another (CrossTypeNumericComparisons)."""
    base = celpy.evaluation.base_functions[name]

    def fn(a: Any, b: Any) -> Any:
        if isinstance(a, _NUMBERS) and isinstance(b, _NUMBERS) and type(a) is not type(b):
            x = float(a) if isinstance(a, ct.DoubleType) else int(a)
            y = float(b) if isinstance(b, ct.DoubleType) else int(b)
            return ct.BoolType(op(x, y))
        return base(a, b)

    return fn


_K8S_FUNCTIONS: dict[str, Callable[..., Any]] = {name: _guard(fn) for name, fn in _K8S_LIBRARY.items()}
_K8S_FUNCTIONS.update(
    {
        "_<_": _numeric_relation("_<_", lambda x, y: x < y),
        "_<=_": _numeric_relation("_<=_", lambda x, y: x <= y),
        "_>_": _numeric_relation("_>_", lambda x, y: x > y),
        "_>=_": _numeric_relation("_>=_", lambda x, y: x >= y),
        "_==_": _numeric_relation("_==_", lambda x, y: x == y),
        "_!=_": _numeric_relation("_!=_", lambda x, y: x != y),
    }
)

# Names rules may use: celpy built-ins, the macros, and the libraries above.
_KNOWN_FUNCTIONS = frozenset(
    {
        "has", "size", "contains", "startsWith", "endsWith", "matches", "type", "int", "uint",
        "double", "string", "bytes", "bool", "duration", "timestamp", "dyn", "list", "map",
        "filter", "all", "exists", "exists_one", "min", "getDate", "getDayOfMonth",
        "getDayOfWeek", "getDayOfYear", "getFullYear", "getMonth", "getHours",
        "getMilliseconds", "getMinutes", "getSeconds",
        *_K8S_FUNCTIONS,
    }
)  # fmt: skip
_KNOWN_IDENTS = frozenset(
    {"null_type", "bool", "int", "uint", "double", "string", "bytes", "list", "map", "type", "dyn"}
)


# ---------------------------------------------------------------------------------------------
# CRD checks at create/update time.

_OPENAPI_TYPES = ["array", "boolean", "integer", "number", "object", "string"]
_ROOT, _ITEM, _FIELD = 0, 1, 2
_NOT_SUPPORTED_KEYS = (
    ("id", "id is not supported"),
    ("additionalItems", "additionalItems is not supported"),
    ("patternProperties", "patternProperties is not supported"),
    ("definitions", "definitions is not supported"),
    ("dependencies", "dependencies is not supported"),
    ("$ref", "$ref is not supported"),
)
_FORBIDDEN_NESTED = (
    ("type", "must be empty to be structural"),
    ("additionalProperties", "must be undefined to be structural"),
    ("default", "must be undefined to be structural"),
    ("title", "must be empty to be structural"),
    ("description", "must be empty to be structural"),
    ("nullable", "must be false to be structural"),
    ("x-kubernetes-preserve-unknown-fields", "must be false to be structural"),
    ("x-kubernetes-embedded-resource", "must be false to be structural"),
    ("x-kubernetes-int-or-string", "must be false to be structural"),
    ("x-kubernetes-list-map-keys", "must be empty to be structural"),
    ("x-kubernetes-list-type", "must be undefined to be structural"),
)


def validate_crd(crd: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> list[FieldError]:
    """The checks the server applies to a CRD on create (``old`` None) or update; [] when acceptable.

    See ``localcluster.crdvalidation``; the schema part is ``validate_crd_schema``.
    """
    from localcluster.crdvalidation import validate_crd as _validate

    return _validate(crd, old)


_UNSUPPORTED_FIELDS = ("id", "$schema", "$ref", "patternProperties", "dependencies", "additionalItems", "definitions")


def _not_convertible(s: Any) -> bool:
    """NewStructural fails (so no structural, default or CEL checks run) on these keywords anywhere."""
    if not isinstance(s, Mapping):
        return False
    if any(k in s for k in _UNSUPPORTED_FIELDS) or isinstance(s.get("items"), list):
        return True
    subs: list[Any] = list((s.get("properties") or {}).values())
    subs += [s.get("items"), s.get("additionalProperties"), s.get("not")]
    for key in ("allOf", "anyOf", "oneOf"):
        subs += list(s.get(key) or [])
    return any(_not_convertible(x) for x in subs)


class _CelCost:
    """The whole schema's estimated rule cost, and the (at most four) rules contributing most."""

    def __init__(self) -> None:
        self.total = 0
        self.most_expensive: list[tuple[int, str]] = []

    def observe(self, path: str, cost: int) -> None:
        self.total = min(self.total + cost, 2**64 - 1)
        if cost < celcheck.PER_CRD_COST_LIMIT // 100:
            return
        self.most_expensive.append((cost, path))
        self.most_expensive.sort(key=lambda x: -x[0])
        del self.most_expensive[4:]


class _CelContext:
    """CELSchemaContext: the CEL type of a schema node and how many times its rules can run."""

    def __init__(self, schema: Mapping[str, Any], decl: celcheck.DeclType | None, cardinality: int | None,
                 cost: _CelCost) -> None:
        self.schema = schema
        self.decl = decl
        self.cardinality = cardinality  # None: unbounded
        self.cost = cost

    def child(self, sub: Mapping[str, Any], decl: celcheck.DeclType | None) -> _CelContext:
        card: int | None = None
        if self.cardinality is not None:
            n = _max_elements(self.schema)
            card = None if n is None else min(self.cardinality * n, 2**64 - 1)
        if decl is None:
            decl = celcheck.decl_type(sub, bool(sub.get("x-kubernetes-embedded-resource")))
        return _CelContext(sub, decl, card, self.cost)


def _max_elements(s: Mapping[str, Any]) -> int | None:
    typ = s.get("type")
    if typ == "object":
        if s.get("additionalProperties") is not None:
            return max(int(s["maxProperties"]), 0) if s.get("maxProperties") is not None else None
        return 1
    if typ == "array":
        return max(int(s["maxItems"]), 0) if s.get("maxItems") is not None else None
    return 1


def _cost_message(name: str, cost: int, limit: int) -> str:
    factor = cost / limit
    if factor > 100.0:
        text = "more than 100x"
    elif factor < 1.5:
        text = f"{factor:f}x"
    else:
        text = f"{factor:.1f}x"
    return (f"{name} exceeds budget by factor of {text} (try simplifying the rule, or adding maxItems, "
            "maxProperties, and maxLength where arrays, maps, and strings are declared)")


_ROOT_ALLOWED_WITH_STATUS = ("description", "type", "required", "properties", "x-kubernetes-preserve-unknown-fields",
                             "x-kubernetes-validations")


def validate_crd_schema(schema: Mapping[str, Any], base: str, status_enabled: bool = False) -> list[FieldError]:
    """validateCustomResourceDefinitionValidation for one openAPIV3Schema at field path ``base``.

    In the server's order: the status-subresource root restrictions and ``nullable`` at the root; then,
    unless a keyword makes the schema unconvertible (``$ref``...), the structural rules (sorted), or
    else the defaults (validated as written against their schema and CEL rules); then what a CRD schema
    may say at all, with the CEL rules compiled, type-checked and costed only where the schema is
    structural and its defaults valid; then the whole schema's cost.
    """
    errs: list[FieldError] = []
    if status_enabled and schema.get("type") not in (None, "", "object"):
        errs.append(_invalid(f"{base}.type", schema.get("type"),
                             'only "object" is allowed as the type at the root of the schema if the status '
                             "subresource is enabled"))
    if schema.get("nullable"):
        errs.append(_forbidden(f"{base}.nullable", "nullable cannot be true at the root"))
    ctx: _CelContext | None = None
    if not _not_convertible(schema):
        structural: list[FieldError] = []
        _check_structural(schema, _ROOT, base, structural)
        structural.sort(key=str)
        if structural:
            errs.extend(structural)
        else:
            default_errs: list[FieldError] = []
            _check_defaults(schema, base, default_errs)
            if default_errs:
                errs.extend(default_errs)
            else:
                ctx = _CelContext(schema, celcheck.decl_type(schema, True), 1, _CelCost())
    schema_errs: list[FieldError] = []
    cel_errs: list[FieldError] = []
    _check_openapi(schema, base, schema_errs, cel_errs, is_root=True, uncorrelatable=None, ctx=ctx)
    errs.extend(schema_errs)
    errs.extend(cel_errs)
    if ctx is not None and ctx.cost.total > celcheck.PER_CRD_COST_LIMIT:
        for _, path in ctx.cost.most_expensive:
            errs.append(_forbidden(path, "contributed to estimated rule cost total exceeding cost limit for entire "
                                         "OpenAPIv3 schema"))
        errs.append(_forbidden(base, _cost_message(
            "x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema", ctx.cost.total,
            celcheck.PER_CRD_COST_LIMIT)))
    return errs


def _key(path: str, key: str) -> str:
    return f"{path}[{key}]"


def _check_openapi(
    s: Mapping[str, Any],
    path: str,
    errs: list[FieldError],
    cel_errs: list[FieldError],
    *,
    is_root: bool,
    uncorrelatable: str | None,
    ctx: _CelContext | None = None,
) -> None:
    """validateCustomResourceDefinitionOpenAPISchema: what a CRD schema may say at all."""
    start = len(errs)
    typ = s.get("type")
    if typ and typ not in _OPENAPI_TYPES:
        if typ == "null":
            errs.append(_forbidden(f"{path}.type", "type cannot be set to null, use nullable as an alternative"))
        else:
            errs.append(_not_supported(f"{path}.type", typ, _OPENAPI_TYPES))
    for key, detail in _NOT_SUPPORTED_KEYS:
        if key in s:
            errs.append(_forbidden(f"{path}.{key}", detail))
    if isinstance(s.get("items"), list):
        errs.append(_forbidden(f"{path}.items", "items must be a schema object and not an array"))
    if s.get("uniqueItems"):
        errs.append(
            _forbidden(
                f"{path}.uniqueItems",
                "uniqueItems cannot be set to true since the runtime complexity becomes quadratic",
            )
        )
    ap = s.get("additionalProperties")
    if ap is not None and s.get("properties") and (ap is False or isinstance(ap, Mapping)):
        errs.append(
            _forbidden(f"{path}.additionalProperties", "additionalProperties and properties are mutual exclusive")
        )
    decl = ctx.decl if ctx is not None else None
    if isinstance(ap, Mapping):
        sub_ctx = ctx.child(ap, decl.elem if decl is not None and decl.kind == "map" else None) if ctx else None
        _check_openapi(ap, f"{path}.additionalProperties", errs, cel_errs, is_root=False,
                       uncorrelatable=uncorrelatable, ctx=sub_ctx)
    for name, sub in (s.get("properties") or {}).items():
        if isinstance(sub, Mapping):
            child_unc = uncorrelatable if s.get("x-kubernetes-map-type") != "atomic" else uncorrelatable or path
            sub_path = _key(f"{path}.properties", name)
            field_decl = decl.fields.get(name) if decl is not None and decl.kind == "object" else None
            sub_ctx = ctx.child(sub, field_decl) if ctx else None
            _check_openapi(sub, sub_path, errs, cel_errs, is_root=False, uncorrelatable=child_unc, ctx=sub_ctx)
    if isinstance(s.get("not"), Mapping):
        _check_openapi(s["not"], f"{path}.not", errs, cel_errs, is_root=False, uncorrelatable=uncorrelatable)
    for key in ("allOf", "oneOf", "anyOf"):
        for j, sub in enumerate(s.get(key) or ()):
            if isinstance(sub, Mapping):
                _check_openapi(sub, f"{path}.{key}[{j}]", errs, cel_errs, is_root=False, uncorrelatable=uncorrelatable)
    items = s.get("items")
    if isinstance(items, Mapping):
        child_unc = uncorrelatable if s.get("x-kubernetes-list-type") == "map" else uncorrelatable or path
        sub_ctx = ctx.child(items, decl.elem if decl is not None and decl.kind == "list" else None) if ctx else None
        _check_openapi(items, f"{path}.items", errs, cel_errs, is_root=False, uncorrelatable=child_unc, ctx=sub_ctx)
    if s.get("x-kubernetes-preserve-unknown-fields") is False:
        errs.append(_invalid(f"{path}.x-kubernetes-preserve-unknown-fields", False, "must be true or undefined"))
    _check_list_type(s, path, errs)
    map_type = s.get("x-kubernetes-map-type")
    if map_type is not None:
        if typ != "object":
            detail = "must be object if x-kubernetes-map-type is specified"
            errs.append(_required(f"{path}.type", detail) if not typ else _invalid(f"{path}.type", typ, detail))
        if map_type not in ("atomic", "granular"):
            errs.append(_not_supported(f"{path}.x-kubernetes-map-type", map_type, ["atomic", "granular"]))
    keys = s.get("x-kubernetes-list-map-keys")
    if keys:
        list_type = s.get("x-kubernetes-list-type")
        detail = "must be map if x-kubernetes-list-map-keys is non-empty"
        if list_type is None:
            errs.append(_required(f"{path}.x-kubernetes-list-type", detail))
        elif list_type != "map":
            errs.append(_invalid(f"{path}.x-kubernetes-list-type", list_type, detail))
    _check_rules(s, path, errs, cel_errs, uncorrelatable, ctx if len(errs) == start else None)


_LIST_MAP_KEY_DEFAULT = (
    "this property is in x-kubernetes-list-map-keys, so it must have a default or be a required property"
)


def _check_list_type(s: Mapping[str, Any], path: str, errs: list[FieldError]) -> None:
    list_type = s.get("x-kubernetes-list-type")
    if list_type is None:
        return
    typ = s.get("type")
    if typ != "array":
        detail = "must be array if x-kubernetes-list-type is specified"
        errs.append(_required(f"{path}.type", detail) if not typ else _invalid(f"{path}.type", typ, detail))
    if list_type not in ("atomic", "set", "map"):
        errs.append(_not_supported(f"{path}.x-kubernetes-list-type", list_type, ["atomic", "set", "map"]))
    items_schema = s.get("items")
    if list_type in ("set", "map") and isinstance(items_schema, Mapping) and items_schema.get("nullable"):
        detail = f"cannot be nullable when x-kubernetes-list-type is {list_type}"
        errs.append(_forbidden(f"{path}.items.nullable", detail))
    if list_type != "map":
        return
    keys = s.get("x-kubernetes-list-map-keys") or []
    if not keys:
        errs.append(
            _required(f"{path}.x-kubernetes-list-map-keys", "must not be empty if x-kubernetes-list-type is map")
        )
    items = s.get("items")
    if not isinstance(items, Mapping):
        errs.append(_required(f"{path}.items", "must have a schema if x-kubernetes-list-type is map"))
        return
    if items.get("type") != "object":
        detail = "must be object if parent array's x-kubernetes-list-type is map"
        errs.append(_invalid(f"{path}.items.type", items.get("type") or "", detail))
        return
    props = items.get("properties") or {}
    required = set(items.get("required") or ())
    seen: set[str] = set()
    for k in keys:
        prop = props.get(k)
        if prop is None:
            errs.append(
                _invalid(f"{path}.x-kubernetes-list-map-keys", keys, "entries must all be names of item properties")
            )
        else:
            if prop.get("type") in ("array", "object"):
                detail = "must be a scalar type if parent array's x-kubernetes-list-type is map"
                errs.append(_invalid(_key(f"{path}.items.properties", k) + ".type", "object", detail))
            if k not in required and "default" not in prop:
                detail = _LIST_MAP_KEY_DEFAULT
                errs.append(_required(_key(f"{path}.items.properties", k) + ".default", detail))
            if prop.get("nullable"):
                errs.append(_forbidden(_key(f"{path}.items.properties", k) + ".nullable",
                                       "this property is in x-kubernetes-list-map-keys, so it cannot be nullable"))
        if k in seen:
            errs.append(_invalid(f"{path}.x-kubernetes-list-map-keys", keys, "must not contain duplicate entries"))
        seen.add(k)


def _rule_repr(rule: Mapping[str, Any]) -> str:
    """An apiextensions.ValidationRule as the server quotes it in a cause (Go's encoding/json)."""
    value = {
        "Rule": str(rule.get("rule") or ""),
        "Message": str(rule.get("message") or ""),
        "MessageExpression": str(rule.get("messageExpression") or ""),
        "Reason": rule.get("reason"),
        "FieldPath": str(rule.get("fieldPath") or ""),
        "OptionalOldSelf": rule.get("optionalOldSelf"),
    }
    return _go_struct_json(value)


def _check_rules(
    s: Mapping[str, Any],
    path: str,
    errs: list[FieldError],
    cel_errs: list[FieldError],
    uncorrelatable: str | None,
    ctx: _CelContext | None,
) -> None:
    """The rules of one node: their fields first; then, where the schema allows CEL at all (``ctx``),
    compilation, type checking, the estimated cost, and ``oldSelf`` only where old values correlate."""
    rules = s.get("x-kubernetes-validations") or ()
    if not rules:
        return
    before = len(errs)
    for i, rule in enumerate(rules):
        rpath = f"{path}.x-kubernetes-validations[{i}]"
        if not isinstance(rule, Mapping):
            errs.append(_invalid(rpath, rule, "must be an object"))
            continue
        _check_rule_fields(rule, rpath, s, errs)
    if len(errs) != before or ctx is None:
        return
    decl = ctx.decl or celcheck.DYN
    for i, rule in enumerate(rules):
        rpath = f"{path}.x-kubernetes-validations[{i}]"
        text = str(rule["rule"])
        compiled = _compiled(text)
        checked = celcheck.check_rule(text, decl) if compiled.error is None else None
        if checked is not None:
            cardinality = ctx.cardinality if ctx.cardinality is not None else celcheck.max_cardinality(decl.min_size)
            cost = min(checked.max_cost * cardinality, 2**64 - 1) if checked.max_cost else 0
            if cost > celcheck.PER_RULE_COST_LIMIT:
                cel_errs.append(_forbidden(f"{rpath}.rule", _cost_message(
                    "estimated rule cost", cost, celcheck.PER_RULE_COST_LIMIT)))
            ctx.cost.observe(f"{rpath}.rule", cost)
        error = compiled.error and f"compilation failed: ERROR: <input>: {compiled.error}"
        if error is None and checked is not None and checked.error is not None:
            error = checked.error if not checked.error.startswith("ERROR:") else f"compilation failed: {checked.error}"
        if error is not None:
            cel_errs.append(FieldError(INVALID, f"{rpath}.rule", f"Invalid value: {_rule_repr(rule)}: {error}"))
            continue
        if mexpr := rule.get("messageExpression"):
            c = _compiled(str(mexpr))
            m_checked = celcheck.check_rule(str(mexpr), decl, string_result=True) if c.error is None else None
            detail = None
            if c.error is not None:
                detail = f"messageExpression compilation failed: ERROR: <input>: {c.error}"
            elif m_checked is not None and m_checked.error is not None:
                detail = m_checked.error if not m_checked.error.startswith("ERROR:") else \
                    f"messageExpression compilation failed: {m_checked.error}"
            if detail is not None:
                cel_errs.append(FieldError(INVALID, f"{rpath}.messageExpression",
                                           f"Invalid value: {_rule_repr(rule)}: {detail}"))
            elif m_checked is not None:
                # A message expression's cost is not multiplied by how often the rule can run.
                if m_checked.max_cost > celcheck.PER_RULE_COST_LIMIT:
                    cel_errs.append(_forbidden(f"{rpath}.messageExpression", _cost_message(
                        "estimated messageExpression cost", m_checked.max_cost, celcheck.PER_RULE_COST_LIMIT)))
                ctx.cost.observe(f"{rpath}.messageExpression", m_checked.max_cost)
        if compiled.uses_old_self:
            if uncorrelatable is not None:
                detail = f"oldSelf cannot be used on the uncorrelatable portion of the schema within {uncorrelatable}"
                cel_errs.append(_invalid(f"{rpath}.rule", rule["rule"], detail))
        elif rule.get("optionalOldSelf") is not None:
            cel_errs.append(_invalid(f"{rpath}.optionalOldSelf", rule["optionalOldSelf"],
                                     "may not be set if oldSelf is not used in rule"))


def _check_rule_fields(rule: Mapping[str, Any], rpath: str, s: Mapping[str, Any], errs: list[FieldError]) -> None:
    """One rule's own fields: rule, message, messageExpression, reason and fieldPath as written."""
    text = str(rule.get("rule") or "").strip()
    message = str(rule.get("message") or "")
    trimmed_msg = message.strip()
    if not text:
        errs.append(_required(f"{rpath}.rule", "rule is not specified"))
    elif message and not trimmed_msg:
        errs.append(_invalid(f"{rpath}.message", message, "must be non-empty if specified"))
    elif "\n" in trimmed_msg or "\r" in trimmed_msg:
        errs.append(_invalid(f"{rpath}.message", message, "must not contain line breaks"))
    elif ("\n" in text or "\r" in text) and not trimmed_msg:
        errs.append(_required(f"{rpath}.message", "message must be specified if rule contains line breaks"))
    mexpr = rule.get("messageExpression")
    if mexpr and not str(mexpr).strip():
        errs.append(_required(f"{rpath}.messageExpression", "messageExpression must be non-empty if specified"))
    reason = rule.get("reason")
    if reason is not None and reason not in (INVALID, FORBIDDEN, REQUIRED, DUPLICATE):
        errs.append(_not_supported(f"{rpath}.reason", reason, [DUPLICATE, FORBIDDEN, INVALID, REQUIRED]))
    fp = rule.get("fieldPath")
    if fp and not str(fp).strip():
        errs.append(_invalid(f"{rpath}.fieldPath", fp, "must be non-empty if specified"))
    elif fp and ("\n" in str(fp) or "\r" in str(fp)):
        errs.append(_invalid(f"{rpath}.fieldPath", fp, "must not contain line breaks"))
    elif fp and not _field_path_exists(str(fp), s):
        errs.append(_invalid(f"{rpath}.fieldPath", fp, "must be a valid path"))


def _field_path_exists(fp: str, s: Mapping[str, Any]) -> bool:
    pos = 0
    cur: Mapping[str, Any] = s
    while pos < len(fp):
        m = _RX_FP_TOKEN.match(fp, pos)
        if not m:
            return False
        name = m.group(1) if m.group(1) is not None else re.sub(r"\\(.)", r"\1", m.group(2))
        props = cur.get("properties")
        if props:
            nxt = props.get(name)
            if not isinstance(nxt, Mapping):
                return False
            cur = nxt
        elif isinstance(cur.get("additionalProperties"), Mapping):
            cur = cur["additionalProperties"]
        else:
            return False
        pos = m.end()
    return pos > 0


def _check_structural(s: Mapping[str, Any], level: int, path: str, errs: list[FieldError]) -> None:
    """ValidateStructural: every node typed, value validations only under logic junctors."""
    typ = s.get("type") or ""
    items = s.get("items")
    if typ == "array" and not isinstance(items, Mapping):
        errs.append(_required(f"{path}.items", "must be specified"))
    if isinstance(items, Mapping):
        _check_structural(items, _ITEM, f"{path}.items", errs)
    for k, sub in (s.get("properties") or {}).items():
        if isinstance(sub, Mapping):
            _check_structural(sub, _FIELD, _key(f"{path}.properties", k), errs)
    ap = s.get("additionalProperties")
    if ap is not None:
        if level == _ROOT:
            errs.append(_forbidden(f"{path}.additionalProperties", "must not be used at the root"))
        if isinstance(ap, Mapping):
            _check_structural(ap, _FIELD, f"{path}.additionalProperties", errs)
    int_or_string = bool(s.get("x-kubernetes-int-or-string"))
    preserve = bool(s.get("x-kubernetes-preserve-unknown-fields"))
    embedded = bool(s.get("x-kubernetes-embedded-resource"))
    if int_or_string and preserve:
        detail = "must be false if x-kubernetes-int-or-string is true"
        errs.append(_invalid(f"{path}.x-kubernetes-preserve-unknown-fields", True, detail))
    if int_or_string and embedded:
        errs.append(
            _invalid(
                f"{path}.x-kubernetes-embedded-resource", True, "must be false if x-kubernetes-int-or-string is true"
            )
        )
    skip_any_of = _is_int_or_string_any_of(s.get("anyOf"))
    all_of = s.get("allOf") or []
    skip_first_all_of_any_of = (
        bool(all_of) and isinstance(all_of[0], Mapping) and _is_int_or_string_any_of(all_of[0].get("anyOf"))
    )
    _check_value_validation(s, skip_any_of, skip_first_all_of_any_of, level, path, errs)
    if embedded and typ != "object":
        detail = "must be object if x-kubernetes-embedded-resource is true"
        errs.append(_required(f"{path}.type", detail) if not typ else _invalid(f"{path}.type", typ, detail))
    elif not typ and not int_or_string and not preserve:
        detail = {
            _ROOT: "must not be empty at the root",
            _ITEM: "must not be empty for specified array items",
            _FIELD: "must not be empty for specified object fields",
        }[level]
        errs.append(_required(f"{path}.type", detail))
    if embedded and ap is not None:
        errs.append(
            _forbidden(f"{path}.additionalProperties", "must not be used if x-kubernetes-embedded-resource is set")
        )
    if level == _ROOT and typ and typ != "object":
        errs.append(_invalid(f"{path}.type", typ, "must be object at the root"))
    props = s.get("properties") or {}
    check_metadata = level == _ROOT or embedded
    for name, want in (("kind", "string"), ("apiVersion", "string"), ("metadata", "object")):
        sub = props.get(name)
        if check_metadata and isinstance(sub, Mapping) and sub.get("type") != want:
            errs.append(_invalid(_key(f"{path}.properties", name) + ".type", sub.get("type") or "", f"must be {want}"))
    meta = props.get("metadata")
    if level == _ROOT and isinstance(meta, Mapping):
        extra = {k for k in meta if k not in ("type", "description", "properties")}
        meta_props = set((meta.get("properties") or {}).keys())
        if extra or meta_props - {"name", "generateName"}:
            detail = "must not specify anything other than name and generateName, but metadata is implicitly specified"
            errs.append(_forbidden(_key(f"{path}.properties", "metadata"), detail))
    if embedded and not preserve and not props:
        detail = (
            "must not be empty if x-kubernetes-embedded-resource is true without x-kubernetes-preserve-unknown-fields"
        )
        errs.append(_required(f"{path}.properties", detail))


def _is_int_or_string_any_of(any_of: Any) -> bool:
    return isinstance(any_of, list) and len(any_of) == 2 and any_of == [{"type": "integer"}, {"type": "string"}]


def _check_value_validation(
    s: Mapping[str, Any],
    skip_any_of: bool,
    skip_first_all_of_any_of: bool,
    level: int,
    path: str,
    errs: list[FieldError],
) -> None:
    if not skip_any_of:
        for i, sub in enumerate(s.get("anyOf") or ()):
            if isinstance(sub, Mapping):
                _check_nested(sub, False, level, f"{path}.anyOf[{i}]", errs)
    for i, sub in enumerate(s.get("allOf") or ()):
        if isinstance(sub, Mapping):
            _check_nested(sub, skip_first_all_of_any_of and i == 0, level, f"{path}.allOf[{i}]", errs)
    for i, sub in enumerate(s.get("oneOf") or ()):
        if isinstance(sub, Mapping):
            _check_nested(sub, False, level, f"{path}.oneOf[{i}]", errs)
    if isinstance(s.get("not"), Mapping):
        _check_nested(s["not"], False, level, f"{path}.not", errs)
    pattern = s.get("pattern")
    if pattern:
        problem = _re2_error(str(pattern))
        if problem is not None:
            errs.append(
                _invalid(f"{path}.pattern", pattern, f"must be a valid regular expression, but isn't: {problem}")
            )


def _check_nested(s: Mapping[str, Any], skip_any_of: bool, level: int, path: str, errs: list[FieldError]) -> None:
    _check_value_validation(s, skip_any_of, False, level, path, errs)
    if isinstance(s.get("items"), Mapping):
        _check_nested(s["items"], False, level, f"{path}.items", errs)
    for k, sub in (s.get("properties") or {}).items():
        if isinstance(sub, Mapping):
            _check_nested(sub, False, _FIELD, _key(f"{path}.properties", k), errs)
    for key, detail in _FORBIDDEN_NESTED:
        if s.get(key):
            errs.append(_forbidden(f"{path}.{key}", detail))
    if "metadata" in (s.get("properties") or {}):
        errs.append(_forbidden(_key(f"{path}.properties", "metadata"), "must not be specified in a nested context"))


def _check_defaults(schema: Mapping[str, Any], base: str, errs: list[FieldError]) -> None:
    """A default must be pruned already and validate against its own schema."""

    def walk(s: Mapping[str, Any], path: str, in_meta: bool) -> None:
        if "default" in s:
            if in_meta:
                errs.append(_forbidden(f"{path}.default", "must not be set in top-level metadata"))
            else:
                _check_default(s, path)
        for k, sub in (s.get("properties") or {}).items():
            if isinstance(sub, Mapping):
                walk(sub, _key(f"{path}.properties", k), in_meta or (path == base and k == "metadata"))
        for key in ("additionalProperties", "items"):
            if isinstance(s.get(key), Mapping):
                walk(s[key], f"{path}.{key}", in_meta)

    def _check_default(s: Mapping[str, Any], path: str) -> None:
        value = s["default"]
        node = _Node(s)
        unknown: list[str] = []
        _unknown(node, copy.deepcopy(value), "", False, unknown)
        if unknown:
            errs.append(_invalid_json(f"{path}.default", value, "must not have unknown fields"))
            return
        if value is None and s.get("nullable"):
            return
        sub_errs: list[FieldError] = []
        _validate_node(node, value, "", sub_errs)
        if node.has_listtype_below:
            _validate_lists(node, value, "", sub_errs)
        if not sub_errs and node.has_rules_below:
            # The rules see the default as written: nested defaults are not filled in first.
            _cel_walk(node, value, None, "", sub_errs, False)
        for e in sub_errs:
            field = f"{path}.default" + ("" if e.field in (_NIL_PATH, "") else f".{e.field}")
            errs.append(FieldError(e.type, field, e.message))

    walk(schema, base, False)
