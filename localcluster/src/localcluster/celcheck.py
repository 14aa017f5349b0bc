"""Static checks of CRD validation rules, as the apiextensions server makes them when a CRD is written.

Two things a real server decides about an ``x-kubernetes-validations`` rule before it accepts the CRD:

* **type checking** (cel-go's checker against the schema's CEL types): ``self.nope`` on an object
  without that property is ``undefined field 'nope'``; ``self.a == 'x'`` with an integer ``a`` is
  ``found no matching overload for '_==_' applied to '(int, string)'``; a rule whose result is not a
  bool is ``cel expression must evaluate to a bool``. The checker here is deliberately partial: it
  reports an error only where the types are certain (properties, literals, the results of the
  standard functions) and gives ``dyn`` - which matches anything - everywhere else.
* **the estimated cost** (cel-go's cost estimator with the Kubernetes size estimates): every value is
  given its largest possible size - ``maxItems``/``maxLength``/``maxProperties`` where declared, else
  what fits into a 3 MiB request (a string of 3145726 bytes, 1048575 strings in a list...), and
  ``maxLength`` counts 4 bytes per character. Identifiers and field selections cost 1, calls 1 plus
  their arguments, ``==`` and string functions a tenth of the string length, ``matches`` the string
  length times a quarter of the regex length, and a macro (``all``, ``exists``, ``map``...) the cost
  of its body times the largest size of its range. The rule's cost is multiplied by how many times it
  can run (the product of the ``maxItems``/``maxProperties`` above it, or what fits into a request)
  and compared with the per-rule limit (10^7) and, summed over the schema, with the per-CRD limit
  (10^8).

The rules are parsed with cel-python's grammar (``celpy``); the parse tree is reduced to a small
expression tree that both passes walk.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import celpy

from localcluster import nesting

__all__ = ["DeclType", "Expr", "RuleCheck", "check_rule", "decl_type", "max_cardinality"]

MAX_REQUEST_SIZE = 3 * 1024 * 1024
PER_RULE_COST_LIMIT = 10_000_000
PER_CRD_COST_LIMIT = 100_000_000
_U64 = 2**64 - 1
_STRING_TRAVERSAL = 0.1
_REGEX_LENGTH = 0.25

_MIN_SIZE = {"string": 2, "bytes": 2, "bool": 4, "int": 1, "double": 1, "duration": 3}
_MAX_STRING = MAX_REQUEST_SIZE - 2


@dataclass
class DeclType:
    """The CEL type a schema node has: kind, fields/element, and its largest and smallest sizes."""

    kind: str  # object, map, list, string, bytes, int, uint, double, bool, duration, timestamp, null, dyn, type
    fields: dict[str, DeclType] = field(default_factory=dict)
    elem: DeclType | None = None
    max_elements: int = 0
    min_size: int = 1

    def name(self) -> str:
        if self.kind == "list":
            return f"list({self.elem.name() if self.elem else 'dyn'})"
        if self.kind == "map":
            return f"map(string, {self.elem.name() if self.elem else 'dyn'})"
        if self.kind == "null":
            return "null_type"
        return self.kind


DYN = DeclType("dyn")
BOOL = DeclType("bool", min_size=4)
INT = DeclType("int")
UINT = DeclType("uint")
DOUBLE = DeclType("double")
STRING = DeclType("string", min_size=2)
BYTES = DeclType("bytes", min_size=2)
NULL = DeclType("null")
DURATION = DeclType("duration", min_size=3)
TIMESTAMP = DeclType("timestamp", min_size=21)
TYPE = DeclType("type")


def _max_string(s: Mapping[str, Any]) -> int:
    if s.get("maxLength") is not None:
        return max(int(s["maxLength"]), 0) * 4
    enum = s.get("enum")
    if isinstance(enum, list) and enum:
        return max((len(v) for v in enum if isinstance(v, str)), default=0)
    return _MAX_STRING


def decl_type(s: Mapping[str, Any] | None, is_root: bool) -> DeclType | None:
    """SchemaDeclType: the CEL type of a structural schema node (None if CEL cannot see it)."""
    if not isinstance(s, Mapping):
        return None
    if s.get("x-kubernetes-int-or-string"):
        return DeclType("dyn", max_elements=_max_string(s) if s.get("maxLength") is not None else _MAX_STRING,
                        min_size=1)
    typ = s.get("type")
    if typ == "array":
        items = s.get("items")
        if not isinstance(items, Mapping):
            return None
        it = decl_type(items, bool(items.get("x-kubernetes-embedded-resource")))
        if it is None:
            return None
        n = max(int(s["maxItems"]), 0) if s.get("maxItems") is not None else (_MAX_STRING // (it.min_size + 1))
        return DeclType("list", elem=it, max_elements=n, min_size=2)
    if typ == "object":
        ap = s.get("additionalProperties")
        if isinstance(ap, Mapping):
            vt = decl_type(ap, bool(ap.get("x-kubernetes-embedded-resource")))
            if vt is None:
                return None
            n = (max(int(s["maxProperties"]), 0) if s.get("maxProperties") is not None
                 else _MAX_STRING // (vt.min_size + 6))
            return DeclType("map", elem=vt, max_elements=n, min_size=2)
        props = dict(s.get("properties") or {})
        if is_root:
            props.setdefault("apiVersion", {"type": "string"})
            props.setdefault("kind", {"type": "string"})
            meta = dict(props.get("metadata") or {"type": "object"})
            meta_props = dict(meta.get("properties") or {})
            meta_props.setdefault("name", {"type": "string"})
            meta_props.setdefault("generateName", {"type": "string"})
            props["metadata"] = {**meta, "type": "object", "properties": meta_props}
        required = set(s.get("required") or ())
        fields: dict[str, DeclType] = {}
        min_size = 2
        for name, prop in props.items():
            ft = decl_type(prop, bool(isinstance(prop, Mapping) and prop.get("x-kubernetes-embedded-resource")))
            if ft is None:
                continue
            fields[name] = ft
            if name in required and "default" not in prop:
                min_size += len(name) + ft.min_size + 4
        return DeclType("object", fields=fields, min_size=min_size)
    if typ == "string":
        fmt = s.get("format")
        if fmt == "byte":
            n = max(int(s["maxLength"]), 0) if s.get("maxLength") is not None else _MAX_STRING
            return DeclType("bytes", max_elements=n, min_size=2)
        if fmt == "duration":
            return DeclType("duration", max_elements=32, min_size=3)
        if fmt == "date":
            return DeclType("timestamp", max_elements=12, min_size=12)
        if fmt == "date-time":
            return DeclType("timestamp", max_elements=32, min_size=21)
        return DeclType("string", max_elements=_max_string(s), min_size=2)
    if typ == "boolean":
        return DeclType("bool", min_size=4)
    if typ == "number":
        return DeclType("double", min_size=1)
    if typ == "integer":
        return DeclType("int", min_size=1)
    return None


def max_cardinality(min_size: int) -> int:
    """How many values of this smallest size fit into one request (each after a comma)."""
    return MAX_REQUEST_SIZE // (min_size + 1)


# ------------------------------------------------------------------------------------------------ the tree
@dataclass
class Expr:
    """A reduced CEL expression: op is lit/ident/select/call/list/map/comp."""

    op: str
    col: int = 0  # 1-based column of the node's operator, for error messages
    value: Any = None  # lit: (kind, python value); ident: name; select: field; call: function; comp: macro
    args: list[Expr] = field(default_factory=list)  # call args; list items; map k,v,k,v...
    target: Expr | None = None  # select operand, member-call receiver, comprehension range
    var: str = ""  # comprehension variable
    test_only: bool = False


_MACROS: dict[str, tuple[int, ...]] = {"all": (2,), "exists": (2,), "exists_one": (2,), "map": (2, 3), "filter": (2,)}
_BINARY = {
    "relation_lt": "_<_", "relation_le": "_<=_", "relation_gt": "_>_", "relation_ge": "_>=_",
    "relation_eq": "_==_", "relation_ne": "_!=_", "relation_in": "@in",
    "addition_add": "_+_", "addition_sub": "_-_",
    "multiplication_mul": "_*_", "multiplication_div": "_/_", "multiplication_mod": "_%_",
}
_OP_TEXT = {"_<_": "<", "_<=_": "<=", "_>_": ">", "_>=_": ">=", "_==_": "==", "_!=_": "!=", "@in": "in",
            "_+_": "+", "_-_": "-", "_*_": "*", "_/_": "/", "_%_": "%"}


class _Unsupported(Exception):
    """A construct this reduction does not know: the rule is then neither type-checked nor costed."""


def _col(tree: Any) -> int:
    meta = getattr(tree, "meta", None)
    return int(getattr(meta, "column", 0) or 0) if meta is not None and not getattr(meta, "empty", True) else 0


def _end_col(tree: Any) -> int:
    meta = getattr(tree, "meta", None)
    return int(getattr(meta, "end_column", 0) or 0) if meta is not None and not getattr(meta, "empty", True) else 0


_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[0-7]{3}|.)", re.S)


def _string_literal(tok: str) -> tuple[str, str]:
    raw = False
    kind = "string"
    while tok and tok[0] in "rRbB":
        if tok[0] in "rR":
            raw = True
        else:
            kind = "bytes"
        tok = tok[1:]
    q = 3 if tok[:3] in ('"""', "'''") else 1
    body = tok[q:-q]
    if not raw:
        body = _ESCAPE.sub(lambda m: "?", body)
    return kind, body


def _literal(tree: Any) -> Expr:
    tok = tree.children[0]
    t, text = tok.type, str(tok)
    col = int(getattr(tok, "column", 0) or 0)
    if t in ("INT_LIT", "UINT_LIT"):
        digits = text[:-1] if t == "UINT_LIT" else text
        try:
            value = int(digits, 0)
        except ValueError:  # a decimal with a leading zero (01), which int() does not read
            raise _Unsupported(text) from None
        return Expr("lit", col, ("int" if t == "INT_LIT" else "uint", value))
    if t == "FLOAT_LIT":
        return Expr("lit", col, ("double", float(text)))
    if t in ("STRING_LIT", "MLSTRING_LIT", "BYTES_LIT"):
        kind, body = _string_literal(text)
        return Expr("lit", col, (kind, body))
    if t == "BOOL_LIT":
        return Expr("lit", col, ("bool", text == "true"))
    if t == "NULL_LIT":
        return Expr("lit", col, ("null", None))
    raise _Unsupported(t)


def _exprlist(tree: Any | None) -> list[Any]:
    return [] if tree is None else list(tree.children)


def reduce_tree(tree: Any) -> Expr:
    """The lark tree of celpy's grammar -> Expr."""
    data = tree.data
    ch = [c for c in tree.children if c is not None]
    if data == "expr":
        if len(ch) == 1:
            return reduce_tree(ch[0])
        return Expr("call", _end_col(ch[0]) + 1, "_?_:_", [reduce_tree(c) for c in ch])
    if data in ("conditionalor", "conditionaland"):
        if len(ch) == 1:
            return reduce_tree(ch[0])
        fn = "_||_" if data == "conditionalor" else "_&&_"
        return Expr("call", _end_col(ch[0]) + 2, fn, [reduce_tree(ch[0]), reduce_tree(ch[1])])
    if data in ("relation", "addition", "multiplication"):
        if len(ch) == 1:
            return reduce_tree(ch[0])
        op_tree, rhs = ch
        fn = _BINARY[op_tree.data]
        lhs = reduce_tree(op_tree.children[0])
        col = _end_col(op_tree) - len(_OP_TEXT[fn])
        return Expr("call", col, fn, [lhs, reduce_tree(rhs)])
    if data == "unary":
        if len(ch) == 1:
            return reduce_tree(ch[0])
        fn = "!_" if ch[0].data == "unary_not" else "-_"
        operand = reduce_tree(ch[1])
        if fn == "-_" and operand.op == "lit" and operand.value[0] in ("int", "double"):
            return Expr("lit", _col(tree), (operand.value[0], -operand.value[1]))
        return Expr("call", _col(tree), fn, [operand])
    if data in ("member", "primary"):
        return reduce_tree(ch[0])
    if data == "member_dot":
        operand = reduce_tree(ch[0])
        return Expr("select", int(ch[1].column) - 1, str(ch[1]), target=operand)
    if data == "member_dot_arg":
        receiver = reduce_tree(ch[0])
        name = str(ch[1])
        args = _exprlist(ch[2] if len(ch) > 2 else None)
        col = int(ch[1].column) - 1
        arity = _MACROS.get(name)
        if arity is not None and len(args) in arity:
            var_expr = reduce_tree(args[0])
            if var_expr.op != "ident":
                raise _Unsupported("macro variable")
            return Expr("comp", col, name, [reduce_tree(a) for a in args[1:]], target=receiver, var=var_expr.value)
        return Expr("call", col, name, [reduce_tree(a) for a in args], target=receiver)
    if data == "member_index":
        return Expr("call", _end_col(ch[0]) + 1, "_[_]", [reduce_tree(ch[0]), reduce_tree(ch[1])])
    if data == "ident":
        return Expr("ident", int(ch[0].column), str(ch[0]))
    if data == "ident_arg":
        name = str(ch[0])
        args = _exprlist(ch[1] if len(ch) > 1 else None)
        if name == "has" and len(args) == 1:
            inner = reduce_tree(args[0])
            if inner.op != "select":
                raise _Unsupported("has")
            inner.test_only = True
            return inner
        return Expr("call", int(ch[0].column), name, [reduce_tree(a) for a in args])
    if data == "paren_expr":
        return reduce_tree(ch[0])
    if data == "literal":
        return _literal(tree)
    if data == "list_lit":
        return Expr("list", _col(tree), args=[reduce_tree(a) for a in _exprlist(ch[0] if ch else None)])
    if data == "map_lit":
        items = list(ch[0].children) if ch else []
        return Expr("map", _col(tree), args=[reduce_tree(a) for a in items])
    raise _Unsupported(data)


# ------------------------------------------------------------------------------------------------ checking
class CheckError(Exception):
    def __init__(self, col: int, message: str) -> None:
        super().__init__(message)
        self.col = col
        self.message = message


_NUMERIC = {"int", "uint", "double"}
_SCALARS = {"int", "uint", "double", "string", "bytes", "bool", "null", "duration", "timestamp"}
_BOOL_FUNCS = {"matches", "startsWith", "endsWith", "contains", "isSorted", "isURL", "isQuantity", "isInteger",
               "isGreaterThan", "isLessThan", "hasValue", "isIP", "isCIDR", "isSemver"}
_STRING_FUNCS = {"lowerAscii", "upperAscii", "trim", "replace", "substring", "charAt", "join", "string",
                 "getScheme", "getHost", "getHostname", "getPort", "getEscapedPath", "format", "quote"}
_CONVERSIONS = {"double": DOUBLE, "uint": UINT, "bool": BOOL, "duration": DURATION, "timestamp": TIMESTAMP,
                "type": TYPE}
_INT_FUNCS = {"size", "int", "indexOf", "lastIndexOf", "compareTo", "asInteger", "sign", "getHours",
              "getMinutes", "getSeconds", "getMilliseconds", "getDate", "getDayOfMonth", "getDayOfWeek",
              "getDayOfYear", "getFullYear", "getMonth"}


# What visiting an expression gives: its type, its largest cost, its largest size and its schema path (the
# last two None where unknown).
Visit: TypeAlias = tuple[DeclType, int, int | None, list[str] | None]


class _Checker:
    """Types and costs one rule; `path` of a value is its schema path (for size estimates)."""

    def __init__(self, self_type: DeclType, old_self: bool) -> None:
        self.root = self_type
        self.scopes: list[dict[str, tuple[DeclType, list[str] | None, int | None]]] = [
            {"self": (self_type, ["self"], None), "oldSelf": (self_type, ["oldSelf"], None)}]
        self.uses_old_self = False
        self.old_self = old_self

    def lookup(self, name: str) -> tuple[DeclType, list[str] | None, int | None] | None:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        return None

    def visit(self, e: Expr) -> Visit:
        if e.op == "lit":
            kind, v = e.value
            t = {"int": INT, "uint": UINT, "double": DOUBLE, "string": STRING, "bytes": BYTES, "bool": BOOL,
                 "null": NULL}[kind]
            size = len(v) if kind in ("string", "bytes") else 1
            return t, 0, size, None
        if e.op == "ident":
            hit = self.lookup(e.value)
            if e.value == "oldSelf":
                self.uses_old_self = True
            if hit is None:
                return DYN, 1, None, None
            t, path, known = hit
            return t, 1, known if known is not None else self.size_of(t, path), path
        if e.op == "select":
            assert e.target is not None
            t, cost, _, path = self.visit(e.target)
            if e.test_only:
                ft = self.field_type(t, e.value, e.col)
                return BOOL, cost, 1, None
            ft = self.field_type(t, e.value, e.col)
            if t.kind in ("object", "map", "dyn") and t.kind != "dyn":
                cost += 1
            sub = [*path, e.value] if path is not None else None
            return ft, cost, self.size_of(ft, sub), sub
        if e.op == "list":
            cost = 10
            elem: DeclType | None = None
            for a in e.args:
                t, c, _, _ = self.visit(a)
                cost += c
                elem = t if elem is None or elem.kind == t.kind else DYN
            return DeclType("list", elem=elem or DYN, max_elements=len(e.args)), cost, len(e.args), None
        if e.op == "map":
            cost = 30
            vt: DeclType | None = None
            for i, a in enumerate(e.args):
                t, c, _, _ = self.visit(a)
                cost += c
                if i % 2:
                    vt = t if vt is None or vt.kind == t.kind else DYN
            n = len(e.args) // 2
            return DeclType("map", elem=vt or DYN, max_elements=n), cost, n, None
        if e.op == "comp":
            return self.comprehension(e)
        return self.call(e)

    def size_of(self, t: DeclType, path: list[str] | None) -> int | None:
        if t.kind in ("int", "uint", "double", "bool", "duration", "timestamp") and path is None:
            return 1
        if path is None:
            return None
        if t.kind == "dyn" and t.max_elements == 0:
            return None
        return t.max_elements

    def field_type(self, t: DeclType, name: str, col: int) -> DeclType:
        if t.kind == "object":
            ft = t.fields.get(name)
            if ft is None:
                raise CheckError(col, f"undefined field '{name}'")
            return ft
        if t.kind == "map":
            return t.elem or DYN
        if t.kind == "dyn":
            return DYN
        raise CheckError(col, f"type '{t.name()}' does not support field selection")

    def comprehension(self, e: Expr) -> Visit:
        assert e.target is not None
        rt, rcost, rsize, rpath = self.visit(e.target)
        if rt.kind == "list":
            et = rt.elem or DYN
            epath = [*rpath, "@items"] if rpath is not None else None
        elif rt.kind == "map":
            et = STRING
            epath = [*rpath, "@keys"] if rpath is not None else None
        elif rt.kind == "dyn":
            et, epath = DYN, None
        else:
            raise CheckError(e.col, f"expression of type '{rt.name()}' cannot be range of a comprehension "
                                    "(must be list, map, or dynamic)")
        esize = et.max_elements if epath is not None else self.size_of(et, None)
        self.scopes.append({e.var: (et, epath, esize)})
        try:
            body = [self.visit(a) for a in e.args]
        finally:
            self.scopes.pop()
        n = rsize if rsize is not None else _U64
        macro = e.value
        # accumulator init + result (an ident: 1) + per-iteration loop condition and step
        if macro in ("all", "exists", "exists_one") and body[0][0].kind not in ("bool", "dyn"):
            op = "_||_" if macro == "exists" else "_&&_"
            raise CheckError(e.col, f"found no matching overload for '{op}' applied to '(bool, {body[0][0].name()})'")
        out: DeclType = BOOL
        if macro == "all":  # loop while @not_strictly_false(__result__); __result__ && p
            init, cond, step, result = 0, 2, 1 + body[0][1], 1
        elif macro == "exists":  # loop while @not_strictly_false(!__result__); __result__ || p
            init, cond, step, result = 0, 3, 1 + body[0][1], 1
        elif macro == "exists_one":  # p ? __result__ + 1 : __result__; then __result__ == 1
            init, cond, step, result = 0, 0, body[0][1] + 2, 2
        elif macro == "map":  # [p ?] __result__ + [f(x)]
            init, cond, step, result = 10, 0, 12 + body[-1][1] + (body[0][1] if len(body) == 2 else 0), 1
            out = DeclType("list", elem=body[-1][0], max_elements=rsize or 0)
        else:  # filter: p ? __result__ + [x] : __result__
            init, cond, step, result = 10, 0, 13 + body[0][1], 1
            out = DeclType("list", elem=et, max_elements=rsize or 0)
        cost = rcost + init + result + _mul(n, cond + step)
        size = rsize if macro in ("map", "filter") else 1
        return out, cost, size, None

    def call(self, e: Expr) -> Visit:
        """An operator goes to its method in _OPERATORS; a function to sized_function, else to _function."""
        target = self.visit(e.target) if e.target is not None else None
        args = [self.visit(a) for a in e.args]
        c = _Call(e.value, e.col, target, args, [a[0] for a in args],
                  sum(a[1] for a in args) + (target[1] if target else 0))
        operator = _OPERATORS.get(c.fn)
        if operator is not None:
            return operator(self, c)
        return self.sized_function(c) or _function(c)

    # One method per CEL operator family and function group, as the checker's overload table lists them.
    def logical(self, c: _Call) -> Visit:
        for t in c.types:
            if t.kind not in ("bool", "dyn"):
                raise CheckError(c.col, f"found no matching overload for '{c.fn}' applied to "
                                        f"'({', '.join(x.name() for x in c.types)})'")
        return BOOL, c.args[0][1] + c.args[1][1], 1, None

    def conditional(self, c: _Call) -> Visit:
        types, args = c.types, c.args
        return (types[1] if types[1].kind == types[2].kind else DYN,
                args[0][1] + max(args[1][1], args[2][1]), None, None)

    def logical_not(self, c: _Call) -> Visit:
        if c.types[0].kind not in ("bool", "dyn"):
            raise CheckError(c.col, f"found no matching overload for '!_' applied to '({c.types[0].name()})'")
        return BOOL, 1 + c.arg_cost, 1, None

    def negative(self, c: _Call) -> Visit:
        return c.types[0], 1 + c.arg_cost, 1, None

    def equality(self, c: _Call) -> Visit:
        a, b = c.types
        if _certain(a) and _certain(b) and not _same(a, b):
            raise CheckError(c.col, f"found no matching overload for '{c.fn}' applied to '({a.name()}, {b.name()})'")
        sizes = [x[2] if x[2] is not None else _U64 for x in c.args]
        return BOOL, _ceil_mul(min(sizes), _STRING_TRAVERSAL) + c.arg_cost, 1, None

    def ordering(self, c: _Call) -> Visit:
        a, b = c.types
        if _certain(a) and _certain(b) and not (_same(a, b) or (a.kind in _NUMERIC and b.kind in _NUMERIC)):
            raise CheckError(c.col, f"found no matching overload for '{c.fn}' applied to '({a.name()}, {b.name()})'")
        if a.kind in ("string", "bytes"):
            sizes = [x[2] if x[2] is not None else _U64 for x in c.args]
            return BOOL, _ceil_mul(min(sizes), _STRING_TRAVERSAL) + c.arg_cost, 1, None
        return BOOL, 1 + c.arg_cost, 1, None

    def arithmetic(self, c: _Call) -> Visit:
        fn, args, arg_cost = c.fn, c.args, c.arg_cost
        a, b = c.types
        ok = not (_certain(a) and _certain(b)) or _same(a, b) or (
            {a.kind, b.kind} <= {"timestamp", "duration"} and fn in ("_+_", "_-_"))
        if not ok:
            raise CheckError(c.col, f"found no matching overload for '{fn}' applied to '({a.name()}, {b.name()})'")
        if fn == "_+_" and a.kind in ("string", "bytes"):
            size = _add(args[0][2], args[1][2])
            return a, _ceil_mul(size if size is not None else _U64, _STRING_TRAVERSAL) + arg_cost, size, None
        if fn == "_+_" and a.kind == "list":
            return a, 1 + arg_cost, _add(args[0][2], args[1][2]), None
        out = a if a.kind != "dyn" else b
        if fn == "_-_" and a.kind == "timestamp" and b.kind == "timestamp":
            out = DURATION
        return out, 1 + arg_cost, 1, None

    def membership(self, c: _Call) -> Visit:
        return BOOL, (c.args[1][2] if c.args[1][2] is not None else _U64) + c.arg_cost, 1, None

    def index(self, c: _Call) -> Visit:
        ct = c.types[0]
        path = c.args[0][3]
        if ct.kind == "list":
            et = ct.elem or DYN
            sub = [*path, "@items"] if path is not None else None
        elif ct.kind == "map":
            et = ct.elem or DYN
            sub = [*path, "@values"] if path is not None else None
        else:
            et, sub = DYN, None
        return et, 1 + c.arg_cost, self.size_of(et, sub), sub

    def sized_function(self, c: _Call) -> Visit | None:
        """The functions whose cost grows with the size of their receiver or arguments (None for others)."""
        fn, recv, args, arg_cost = c.fn, c.target, c.args, c.arg_cost
        tsize = recv[2] if recv is not None and recv[2] is not None else _U64
        if fn in ("matches", "find", "findAll") and (recv is not None and args):
            rsize = args[0][2] if args[0][2] is not None else _U64
            cost = _mul(_ceil_mul(_add(tsize, 1) or 0, _STRING_TRAVERSAL), _ceil_mul(rsize, _REGEX_LENGTH))
            out = BOOL if fn == "matches" else (STRING if fn == "find" else DeclType("list", elem=STRING))
            return out, _sat(cost + arg_cost), tsize if fn != "matches" else 1, None
        if fn == "matches" and recv is None and len(args) == 2:
            ssize = args[0][2] if args[0][2] is not None else _U64
            rsize = args[1][2] if args[1][2] is not None else _U64
            cost = _mul(_ceil_mul(_add(ssize, 1) or 0, _STRING_TRAVERSAL), _ceil_mul(rsize, _REGEX_LENGTH))
            return BOOL, _sat(cost + arg_cost), 1, None
        if fn in ("startsWith", "endsWith") and recv is not None and args:
            asize = args[0][2] if args[0][2] is not None else _U64
            return BOOL, _ceil_mul(asize, _STRING_TRAVERSAL) + arg_cost, 1, None
        if fn == "contains" and recv is not None and args:
            asize = args[0][2] if args[0][2] is not None else _U64
            cost = _mul(_ceil_mul(tsize, _STRING_TRAVERSAL), _ceil_mul(asize, _STRING_TRAVERSAL))
            return BOOL, _sat(cost + arg_cost), 1, None
        if fn in ("lowerAscii", "upperAscii", "substring", "trim") and recv is not None:
            return STRING, _ceil_mul(tsize, _STRING_TRAVERSAL) + arg_cost, tsize, None
        if fn in ("isSorted", "sum", "max", "min", "indexOf", "lastIndexOf") and recv is not None:
            el = recv[0].elem if recv[0].kind == "list" else None
            if el is not None:
                el_cost = 1
                if el.kind in ("string", "bytes"):
                    el_cost += _ceil_mul(el.max_elements, _STRING_TRAVERSAL)
                out = INT if fn in ("indexOf", "lastIndexOf") else (BOOL if fn == "isSorted" else el)
                return out, _sat(_mul(tsize, el_cost) + arg_cost), 1, None
            return INT, _ceil_mul(tsize, _STRING_TRAVERSAL) + arg_cost, 1, None
        if fn in ("replace", "split") and recv is not None:
            out = STRING if fn == "replace" else DeclType("list", elem=STRING)
            return out, _ceil_mul(tsize, 2 * _STRING_TRAVERSAL) + arg_cost, tsize, None
        if fn in ("url",) and args:
            asize = args[0][2] if args[0][2] is not None else _U64
            return DYN, _ceil_mul(asize, _STRING_TRAVERSAL) + arg_cost, asize, None
        return None


@dataclass
class _Call:
    """A call once its receiver and arguments are visited: what `_Checker`'s operator and function methods take."""

    fn: str
    col: int
    target: Visit | None
    args: list[Visit]
    types: list[DeclType]
    arg_cost: int


_OPERATORS: dict[str, Callable[[_Checker, _Call], Visit]] = {
    "_&&_": _Checker.logical, "_||_": _Checker.logical,
    "_?_:_": _Checker.conditional,
    "!_": _Checker.logical_not,
    "-_": _Checker.negative,
    "_==_": _Checker.equality, "_!=_": _Checker.equality,
    "_<_": _Checker.ordering, "_<=_": _Checker.ordering, "_>_": _Checker.ordering, "_>=_": _Checker.ordering,
    "_+_": _Checker.arithmetic, "_-_": _Checker.arithmetic, "_*_": _Checker.arithmetic, "_/_": _Checker.arithmetic,
    "_%_": _Checker.arithmetic,
    "@in": _Checker.membership,
    "_[_]": _Checker.index,
}


def _function(c: _Call) -> Visit:
    """The other functions: a cost of 1 plus the arguments, and the type they return."""
    if c.fn == "size":
        return INT, 1 + c.arg_cost, 1, None
    if c.fn in _BOOL_FUNCS:
        return BOOL, 1 + c.arg_cost, 1, None
    if c.fn in _INT_FUNCS:
        return INT, 1 + c.arg_cost, 1, None
    if c.fn in _STRING_FUNCS:
        return STRING, 1 + c.arg_cost, None, None
    if c.fn in _CONVERSIONS:
        return _CONVERSIONS[c.fn], 1 + c.arg_cost, 1, None
    if c.fn == "dyn" and c.args:
        return DYN, 1 + c.args[0][1], c.args[0][2], c.args[0][3]
    return DYN, 1 + c.arg_cost, None, None


def _certain(t: DeclType) -> bool:
    return t.kind in _SCALARS


def _same(a: DeclType, b: DeclType) -> bool:
    return a.kind == b.kind


def _sat(x: int) -> int:
    return min(x, _U64)


def _add(a: int | None, b: int | None) -> int | None:
    if a is None or b is None:
        return None
    return _sat(a + b)


def _mul(a: int, b: int) -> int:
    return _sat(a * b)


def _ceil_mul(x: int, factor: float) -> int:
    return _sat(math.ceil(float(x) * factor))


# ------------------------------------------------------------------------------------------------ API
_PARSER_ENV = nesting.celpy_environment()


@dataclass
class RuleCheck:
    """What checking one rule found: a compile error text (None if it compiles) and its cost."""

    error: str | None
    max_cost: int
    uses_old_self: bool


def _caret(text: str, col: int, message: str) -> str:
    line = text.split("\n")[0] if "\n" not in text else text
    return f"ERROR: <input>:1:{col}: {message}\n | {line}\n | {'.' * max(col - 1, 0)}^"


def check_rule(text: str, self_type: DeclType, *, string_result: bool = False) -> RuleCheck:
    """Type-check and cost one rule against the CEL type of the schema node it sits on.

    Parse errors are not reported here (the caller compiles rules for evaluation and words those).
    """
    try:
        tree = _PARSER_ENV.compile(text)
        expr = reduce_tree(tree)
    except (celpy.CELParseError, _Unsupported, RecursionError):
        # A parse error is the caller's to word; a construct the reduction does not know, or a nesting too
        # deep to reduce, leaves the rule unchecked.
        return RuleCheck(None, 0, "oldSelf" in text)
    checker = _Checker(self_type, old_self=True)
    try:
        t, cost, _, _ = checker.visit(expr)
    except CheckError as err:
        return RuleCheck(_caret(text, err.col, err.message), 0, checker.uses_old_self)
    except RecursionError:  # a hostile nesting depth: left to the evaluator's own limits
        return RuleCheck(None, 0, "oldSelf" in text)
    want = "string" if string_result else "bool"
    if t.kind not in (want, "dyn"):
        detail = "messageExpression must evaluate to a string" if string_result else \
            "cel expression must evaluate to a bool"
        return RuleCheck(detail, cost, checker.uses_old_self)
    return RuleCheck(None, cost, checker.uses_old_self)
