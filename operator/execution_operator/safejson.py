"""JSON decoding that no object the API server stores can break.

The API server accepts custom resources nested thousands of levels deep (its own limit is 10,000);
Python's decoder recurses and raises RecursionError near 1,000. One such object in a watch stream or
a list would end the operator for every tenant. `loads` decodes as usual and, only for a document
nested deeper than `DECODE_DEPTH`, decodes it with every value nested deeper than `MAX_DEPTH`
replaced by `TOO_DEEP`; the Kubernetes object holding it is marked with `QUARANTINE_KEY` (the path
of the first clipped value), so the controller can refuse it with a clear status instead of acting on
a clipped copy.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from execution_operator.api import GROUP

#: Values nested deeper than this (counted from the document's root) are replaced when decoding fails.
MAX_DEPTH: Final = 100
#: Documents nested deeper than this are decoded clipped. Python's decoder recurses once a level, and
#: what decodes must not depend on the process's recursion limit (any library may change it).
DECODE_DEPTH: Final = 500
#: What a clipped value decodes to.
TOO_DEEP: Final = f"\x00{GROUP}/nested-too-deep"
#: Set on an object (a dict with `metadata`) whose body was clipped: the path of its first clipped value.
QUARANTINE_KEY: Final = f"__{GROUP}/clipped__"

_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def loads(text: str | bytes) -> Any:
    """`json.loads`, except that depth never raises: too-deep values are clipped and marked."""
    if not _nests_deeper_than(text, DECODE_DEPTH):
        try:
            return json.loads(text)
        except RecursionError:  # a thread started with little stack: clipped as if deeper
            pass
    raw = text.decode("utf-8") if isinstance(text, bytes) else text
    value = json.loads(clip(raw, MAX_DEPTH))
    _mark(value)
    return value


def _nests_deeper_than(text: str | bytes, limit: int) -> bool:
    """Whether the document opens more than `limit` arrays or objects inside one another.

    Cheap for ordinary documents: only one with more brackets than `limit` in all is scanned.
    """
    if isinstance(text, bytes):
        if text.count(b"[") + text.count(b"{") <= limit:
            return False
        text = text.decode("utf-8", errors="replace")
    elif text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token[0] == '"':
            continue
        depth += 1 if token in "[{" else -1
        if depth > limit:
            return True
    return False


def clip(text: str, max_depth: int) -> str:
    """The JSON text with every array or object opened below `max_depth` replaced by `TOO_DEEP`."""
    out: list[str] = []
    depth = 0
    skip_from: int | None = None  # where the clipped value started, while skipping it
    last = 0
    marker = json.dumps(TOO_DEEP)
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token[0] == '"':
            continue
        if token in "[{":
            depth += 1
            if depth > max_depth and skip_from is None:
                out.append(text[last:match.start()])
                skip_from = match.start()
        else:
            if skip_from is not None and depth == max_depth + 1:
                out.append(marker)
                last = match.end()
                skip_from = None
            depth -= 1
    out.append(text[last:])
    return "".join(out)


def _mark(value: Any) -> bool:
    """Mark the innermost Kubernetes object around clipped values; True when `value` holds an unowned one."""
    if isinstance(value, str):
        return value == TOO_DEEP
    if isinstance(value, dict):
        holds = any([_mark(item) for item in value.values()])  # a list: every nested object gets marked
    elif isinstance(value, list):
        holds = any([_mark(item) for item in value])
    else:
        return False
    if holds and isinstance(value, dict) and isinstance(value.get("metadata"), dict):
        value[QUARANTINE_KEY] = _first_clipped(value, "") or "(unknown)"
        return False  # the object owns it: the enclosing ones (an event, a list) are not marked
    return holds


def _first_clipped(value: Any, path: str) -> str | None:
    """The path (`spec.input[0][0]...`) of the first clipped value under `value`, cut to 200 characters."""
    if value == TOO_DEEP:
        return path if len(path) <= 200 else path[:197] + "..."
    items: Any = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if key == QUARANTINE_KEY:
            continue
        found = _first_clipped(item, path + (f".{key}" if isinstance(value, dict) else f"[{key}]"))
        if found is not None:
            return found
    return None


def quarantined(body: Any) -> str | None:
    """The path of the first clipped value when `body` was too deep to decode whole, else None."""
    if isinstance(body, dict):
        reason = body.get(QUARANTINE_KEY)
        return str(reason).lstrip(".") if reason else None
    return None
