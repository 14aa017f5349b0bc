"""Label and field selectors, parsed once per request and matched against stored objects.

The label selector grammar, its error messages and the per-kind field labels follow the real API
server (apimachinery's `labels.Parse` and `fields.ParseSelector`, and each kind's field label
conversion), because clients show those messages to users and rely on what is refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from localcluster.apiserver import validation
from localcluster.apiserver.status import ApiError

if TYPE_CHECKING:
    from localcluster.apiserver.resources import ResourceInfo

Matcher = Callable[[dict[str, Any]], bool]

# -- label selectors (apimachinery labels.Parse) -----------------------------------------------------
_SYMBOLS = "=!(),><"
_TOKENS = {")": "CLOSE", ",": "COMMA", "!": "NOT", "==": "EQEQ", "=": "EQ", ">": "GT", "in": "IN", "<": "LT",
           "!=": "NEQ", "notin": "NOTIN", "(": "OPEN"}
_BINARY_OPERATORS = "in, notin, =, ==, !=, gt, lt"


class _SelectorError(Exception):
    pass


def _go_quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _lex(s: str) -> list[tuple[str, str]]:
    """Tokens as (kind, literal); 'ID' for identifiers, 'ERR' for an unknown symbol run, 'EOS' last."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(s)
    while True:
        while i < n and s[i] in " \t\r\n":
            i += 1
        if i >= n:
            out.append(("EOS", ""))
            return out
        if s[i] in _SYMBOLS:
            # the longest run of symbols that is a token, as the real lexer reads it
            j, last = i, None
            buf = ""
            while j < n and s[j] in _SYMBOLS:
                buf += s[j]
                if buf in _TOKENS:
                    last = (_TOKENS[buf], buf, j + 1)
                elif last is not None:
                    break
                j += 1
            if last is None:
                out.append(("ERR", f"error expected: keyword found '{buf}'"))
                i = j
            else:
                out.append((last[0], last[1]))
                i = last[2]
            continue
        j = i
        while j < n and s[j] not in _SYMBOLS and s[j] not in " \t\r\n":
            j += 1
        lit = s[i:j]
        out.append((_TOKENS.get(lit, "ID") if lit in ("in", "notin") else "ID", lit))
        i = j


class _Parser:
    def __init__(self, text: str) -> None:
        self.items = _lex(text)
        self.pos = 0

    def _look(self, values: bool = True) -> tuple[str, str]:
        tok, lit = self.items[self.pos]
        return ("ID" if values and tok in ("IN", "NOTIN") else tok), lit

    def _take(self, values: bool = True) -> tuple[str, str]:
        tok, lit = self._look(values)
        self.pos += 1
        return tok, lit

    def parse(self) -> list[tuple[str, str, list[str]]]:
        reqs: list[tuple[str, str, list[str]]] = []
        while True:
            tok, lit = self._look()
            if tok in ("ID", "NOT"):
                try:
                    reqs.append(self._requirement())
                except _SelectorError as e:
                    raise _SelectorError(f"unable to parse requirement: {e}") from None
                t, lit2 = self._take()
                if t == "EOS":
                    return reqs
                if t == "COMMA":
                    t2, l2 = self._look()
                    if t2 not in ("ID", "NOT"):
                        raise _SelectorError(f"found '{l2}', expected: identifier after ','")
                else:
                    raise _SelectorError(f"found '{lit2}', expected: ',' or 'end of string'")
            elif tok == "EOS":
                return reqs
            else:
                raise _SelectorError(f"found '{lit}', expected: !, identifier, or 'end of string'")

    def _requirement(self) -> tuple[str, str, list[str]]:
        op = ""
        tok, key = self._take()
        if tok == "NOT":
            op = "!"
            tok, key = self._take()
        if tok != "ID":
            raise _SelectorError(f"found '{key}', expected: identifier")
        errs = validation.qualified_name(key, "a valid label key")
        if errs:
            raise _SelectorError(f"<nil>: Invalid value: {_go_quote(key)}: {'; '.join(errs)}")
        if op == "!" or self._look()[0] in ("EOS", "COMMA"):
            # "!key" is complete whatever follows; what follows is then the parser's to refuse
            return self._checked(key, op or "exists", [])
        tok, lit = self._take(values=False)
        ops = {"IN": "in", "EQ": "=", "EQEQ": "==", "GT": "gt", "LT": "lt", "NOTIN": "notin", "NEQ": "!="}
        if tok not in ops:
            raise _SelectorError(f"found '{lit}', expected: {_BINARY_OPERATORS}")
        operator = ops[tok]
        values = self._set_values() if operator in ("in", "notin") else self._exact_value()
        return self._checked(key, operator, sorted(values))

    def _set_values(self) -> set[str]:
        tok, lit = self._take()
        if tok != "OPEN":
            raise _SelectorError(f"found '{lit}' expected: '('")
        tok, lit = self._look()
        if tok == "CLOSE":
            self._take()
            return {""}
        if tok not in ("ID", "COMMA"):
            raise _SelectorError(f"found '{lit}', expected: ',', ')' or identifier")
        values = self._identifiers()
        if self._take()[0] != "CLOSE":
            raise _SelectorError(f"found '{lit}', expected: ')'")
        return values

    def _identifiers(self) -> set[str]:
        values: set[str] = set()
        while True:
            tok, lit = self._take()
            if tok == "ID":
                values.add(lit)
                t2, l2 = self._look()
                if t2 == "COMMA":
                    continue
                if t2 == "CLOSE":
                    return values
                raise _SelectorError(f"found '{l2}', expected: ',' or ')'")
            if tok == "COMMA":
                if not values:
                    values.add("")
                t2, _ = self._look()
                if t2 == "CLOSE":
                    values.add("")
                    return values
                if t2 == "COMMA":
                    values.add("")
                continue
            raise _SelectorError(f"found '{lit}', expected: ',', or identifier")

    def _exact_value(self) -> set[str]:
        if self._look()[0] in ("EOS", "COMMA"):
            return {""}
        tok, lit = self._take()
        if tok == "ID":
            return {lit}
        raise _SelectorError(f"found '{lit}', expected: identifier")

    @staticmethod
    def _checked(key: str, op: str, values: list[str]) -> tuple[str, str, list[str]]:
        """NewRequirement's checks (the key was checked already): one aggregated error, in its order."""
        errs: list[str] = []
        if op in ("gt", "lt"):
            for i, v in enumerate(values):
                if not re.fullmatch(r"[+-]?\d+", v) or not -(2**63) <= int(v) < 2**63:
                    errs.append(f"values[{i}]: Invalid value: {_go_quote(v)}: for 'Gt', 'Lt' operators, the value "
                                "must be an integer")
        for i, v in enumerate(values):
            verrs = validation.label_value(v)
            if verrs:
                errs.append(f"values[{i}][{key}]: Invalid value: {_go_quote(v)}: {'; '.join(verrs)}")
        errs = list(dict.fromkeys(errs))
        if errs:
            raise _SelectorError(errs[0] if len(errs) == 1 else "[" + ", ".join(errs) + "]")
        return key, op, values


def _label_predicate(key: str, op: str, values: list[str]) -> Callable[[dict[str, str]], bool]:
    vals = set(values)
    if op in ("in", "=", "=="):
        return lambda lb: key in lb and lb[key] in vals
    if op in ("notin", "!="):
        return lambda lb: key not in lb or lb[key] not in vals
    if op == "exists":
        return lambda lb: key in lb
    if op == "!":
        return lambda lb: key not in lb
    bound = int(values[0])

    def compare(lb: dict[str, str]) -> bool:
        v = lb.get(key)
        if v is None or not re.fullmatch(r"[+-]?\d+", v):
            return False
        return int(v) > bound if op == "gt" else int(v) < bound

    return compare


def parse_label_selector(expr: str | None) -> Matcher | None:
    """Parse a label selector as the API server does; None means match everything. 400 on a syntax error."""
    if not expr:
        return None
    try:
        reqs = _Parser(expr).parse()
    except _SelectorError as e:
        raise ApiError(400, str(e), "BadRequest") from None
    if not reqs:
        return None
    preds = [_label_predicate(*r) for r in reqs]

    def match(obj: dict[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(p(labels) for p in preds)

    return match


# -- field selectors (apimachinery fields.ParseSelector and the kinds' field labels) ---------------
def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _at(obj: dict[str, Any], path: str) -> Any:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def _pod_ips(pod: dict[str, Any]) -> str:
    ips = [p.get("ip", "") for p in (pod.get("status") or {}).get("podIPs") or [] if isinstance(p, dict)]
    return ",".join(ips) if ips else _text(_at(pod, "status.podIP"))


FieldGetter = Callable[[dict[str, Any]], str]
_META: dict[str, FieldGetter] = {
    "metadata.name": lambda o: _text(_at(o, "metadata.name")),
    "metadata.namespace": lambda o: _text(_at(o, "metadata.namespace")),
}


def _getter(path: str) -> FieldGetter:
    return lambda o: _text(_at(o, path))


def _paths(*paths: str) -> dict[str, FieldGetter]:
    return {p: _getter(p) for p in paths}


# The field labels each built-in kind accepts (core/v1 conversion.go); other kinds accept only metadata.
_BUILTIN_FIELDS: dict[tuple[str, str], dict[str, FieldGetter]] = {
    ("", "pods"): {
        **_META,
        **_paths("spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
                 "status.phase", "status.podIP", "status.nominatedNodeName"),
        "spec.hostNetwork": lambda o: _text(bool(_at(o, "spec.hostNetwork"))),
        "status.podIPs": _pod_ips,
    },
    ("", "nodes"): {"metadata.name": _META["metadata.name"],
                    "spec.unschedulable": lambda o: _text(bool(_at(o, "spec.unschedulable")))},
    ("", "events"): {
        **_META,
        **_paths("involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
                 "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
                 "reason", "type"),
        "reportingComponent": lambda o: _text(o.get("reportingComponent") or o.get("reportingController")),
        "source": lambda o: _text(_at(o, "source.component")),
    },
    ("", "namespaces"): {"metadata.name": _META["metadata.name"], **_paths("status.phase")},
    ("", "secrets"): {**_META, **_paths("type")},
    ("", "services"): {**_META, **_paths("spec.clusterIP", "spec.type")},
}
# Kinds with their own conversion word their refusal differently from the generic metadata-only one.
_OWN_MESSAGE = set(_BUILTIN_FIELDS)


def field_labels(info: ResourceInfo) -> dict[str, FieldGetter]:
    """The field labels a resource can be selected by, each with how to read it from an object."""
    if info.custom:
        fields = dict(_META)
        for sf in info.selectable_fields:
            label = str(sf.get("jsonPath", "")).lstrip(".")
            if label:
                fields[label] = _getter(label)
        return fields
    return _BUILTIN_FIELDS.get(info.store_key, _META)


def _unsupported(info: ResourceInfo | None, label: str) -> ApiError:
    if info is None or info.custom or info.store_key in _OWN_MESSAGE:
        return ApiError(400, f"field label not supported: {label}", "BadRequest")
    return ApiError(400, f'"{label}" is not a known field selector: only "metadata.name", "metadata.namespace"',
                    "BadRequest")


def _split_term(part: str, op: str) -> tuple[str, str] | None:
    pieces = part.split(op)
    return (pieces[0], pieces[1]) if len(pieces) == 2 else None


def parse_field_selector(expr: str | None, info: ResourceInfo | None = None) -> Matcher | None:
    """Parse `a=b,c!=d` (also `==`) as the API server does; with `info`, only that kind's field labels."""
    if not expr:
        return None
    terms: list[tuple[str, str, bool]] = []
    for part in sorted(expr.split(",")):
        if not part:
            continue
        for op, eq in (("!=", False), ("==", True), ("=", True)):
            kv = _split_term(part, op)
            if kv is not None:
                terms.append((kv[0], kv[1], eq))
                break
        else:
            raise ApiError(400, f"invalid selector: '{expr}'; can't understand '{part}'", "BadRequest")
    if not terms:
        return None
    labels = field_labels(info) if info is not None else {}
    getters: list[tuple[FieldGetter, str, bool]] = []
    for label, value, eq in terms:
        if info is not None and info.store_key == ("", "pods") and label == "spec.host":
            label = "spec.nodeName"
        getter = labels.get(label)
        if getter is None:
            if info is not None:
                raise _unsupported(info, label)
            getter = _getter(label)
        getters.append((getter, value, eq))

    def match(obj: dict[str, Any]) -> bool:
        return all((g(obj) == v) == eq for g, v, eq in getters)

    return match


def combine(*matchers: Matcher | None) -> Matcher | None:
    ms = [m for m in matchers if m is not None]
    if not ms:
        return None
    if len(ms) == 1:
        return ms[0]
    return lambda obj: all(m(obj) for m in ms)


def has_selector(q: Any) -> bool:
    """Whether a request restricts by label or field (the real server then gives no remainingItemCount)."""
    return bool(q.get("labelSelector") or q.get("fieldSelector"))
