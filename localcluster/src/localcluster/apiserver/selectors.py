"""Label and field selectors, parsed once per request and matched against stored objects."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from localcluster.apiserver.status import ApiError

Matcher = Callable[[dict[str, Any]], bool]

_SET_RE = re.compile(r"^\s*([A-Za-z0-9./_-]+)\s+(in|notin)\s*\(([^)]*)\)\s*$")


def _split_top(expr: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    out: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in expr:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if cur:
        out.append("".join(cur))
    return [p.strip() for p in out if p.strip()]


def parse_label_selector(expr: str | None) -> Matcher | None:
    """Parse `a=b,c!=d,e in (x,y),f notin (z),g,!h`; None means match everything."""
    if not expr:
        return None
    reqs = [_label_requirement(part) for part in _split_top(expr)]

    def match(obj: dict[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(r(labels) for r in reqs)

    return match


def _label_requirement(part: str) -> Callable[[dict[str, str]], bool]:
    """One requirement of a label selector as a predicate on the labels map."""
    m = _SET_RE.match(part)
    if m:
        key, op, vals = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",") if v.strip()}
        if op == "in":
            return lambda lb: lb.get(key) in vals
        return lambda lb: lb.get(key) not in vals
    for op in ("!=", "==", "="):
        if op in part:
            k, v = (x.strip() for x in part.split(op, 1))
            if op == "!=":
                return lambda lb: lb.get(k) != v
            return lambda lb: lb.get(k) == v
    if part.startswith("!"):
        k = part[1:].strip()
        return lambda lb: k not in lb
    if re.match(r"^[A-Za-z0-9./_-]+$", part):
        return lambda lb: part in lb
    raise ApiError(400, f"unable to parse requirement: found '{part}', expected: identifier", "BadRequest")


def _field_value(obj: dict[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def parse_field_selector(expr: str | None) -> Matcher | None:
    """Parse `metadata.name=x,status.phase!=Running`; any dotted path is accepted."""
    if not expr:
        return None
    reqs: list[tuple[str, str, bool]] = []
    for part in _split_top(expr):
        if "!=" in part:
            k, v = part.split("!=", 1)
            reqs.append((k.strip(), v.strip(), False))
        elif "==" in part:
            k, v = part.split("==", 1)
            reqs.append((k.strip(), v.strip(), True))
        elif "=" in part:
            k, v = part.split("=", 1)
            reqs.append((k.strip(), v.strip(), True))
        else:
            raise ApiError(400, f'invalid selector: \'{expr}\'; can\'t understand \'{part}\'', "BadRequest")

    def match(obj: dict[str, Any]) -> bool:
        return all((_field_value(obj, k) == v) == eq for k, v, eq in reqs)

    return match


def combine(*matchers: Matcher | None) -> Matcher | None:
    ms = [m for m in matchers if m is not None]
    if not ms:
        return None
    if len(ms) == 1:
        return ms[0]
    return lambda obj: all(m(obj) for m in ms)
