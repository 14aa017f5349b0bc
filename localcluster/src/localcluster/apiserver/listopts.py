"""List and watch query parameters, read and checked as the real API server does.

The order matters because clients see only the first error: the parameters are decoded first (integers,
then the selectors' syntax: 400), then the combination is validated (`ListOptions` 422), then the field
selector's labels are checked against the kind (400). Continue tokens have the real server's shape
(base64url of `{"v","rv","start"}`), so a token from one server is refused by another the same way.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from localcluster.apiserver.selectors import Matcher, combine, parse_field_selector, parse_label_selector
from localcluster.apiserver.status import ApiError

if TYPE_CHECKING:
    from localcluster.apiserver.resources import ResourceInfo

NOT_OLDER_THAN = "NotOlderThan"
EXACT = "Exact"
_INT_RE = re.compile(r"^[+-]?[0-9]+$")


def query_bool(q: Any, name: str) -> bool | None:
    """A boolean query parameter as the API server converts it: absent is None; "0" and "false" (any case)
    are false; anything else, the empty string included, is true."""
    if name not in q:
        return None
    value = str(q.get(name))
    return not (value == "0" or value.lower() == "false")


def _int64(q: Any, name: str) -> int | None:
    """strconv.ParseInt(value, 10, 64) with Go's error text."""
    if name not in q:
        return None
    value = str(q.get(name))
    if not _INT_RE.match(value):
        raise ApiError(400, f'strconv.ParseInt: parsing "{value}": invalid syntax', "BadRequest")
    n = int(value)
    if not -(2**63) <= n < 2**63:
        raise ApiError(400, f'strconv.ParseInt: parsing "{value}": value out of range', "BadRequest")
    return n


@dataclass
class ListOptions:
    """What a list or watch request asked for, after the checks."""

    watch: bool
    matcher: Matcher | None
    has_selector: bool
    allow_bookmarks: bool
    resource_version: str
    rv_match: str
    timeout: int | None
    limit: int
    continue_token: str
    send_initial: bool | None


def _forbidden(field: str, detail: str) -> dict[str, str]:
    return {"reason": "FieldValueForbidden", "message": f"Forbidden: {detail}", "field": field}


def _not_supported(field: str, value: str, allowed: list[str]) -> dict[str, str]:
    listed = ", ".join(f'"{a}"' for a in allowed)
    return {"reason": "FieldValueNotSupported", "message": f'Unsupported value: "{value}": supported values: {listed}',
            "field": field}


def _validate(o: ListOptions) -> list[dict[str, str]]:
    """apimachinery's ValidateListOptions (with the WatchList feature on, as in 1.36)."""
    causes: list[dict[str, str]] = []
    match = o.rv_match
    if o.watch:
        if o.send_initial is not None and match != NOT_OLDER_THAN:
            causes.append(_forbidden("resourceVersionMatch",
                                     "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"))
        if match:
            if o.send_initial is None:
                causes.append(_forbidden("resourceVersionMatch", "resourceVersionMatch is forbidden for watch "
                                                                 "unless sendInitialEvents is provided"))
            if match != NOT_OLDER_THAN:
                causes.append(_not_supported("resourceVersionMatch", match, [NOT_OLDER_THAN]))
            if o.continue_token:
                causes.append(_forbidden("resourceVersionMatch",
                                         "resourceVersionMatch is forbidden when continue is provided"))
        return causes
    if match:
        if not o.resource_version:
            causes.append(_forbidden("resourceVersionMatch",
                                     "resourceVersionMatch is forbidden unless resourceVersion is provided"))
        if o.continue_token:
            causes.append(_forbidden("resourceVersionMatch",
                                     "resourceVersionMatch is forbidden when continue is provided"))
        if match not in (EXACT, NOT_OLDER_THAN):
            causes.append(_not_supported("resourceVersionMatch", match, [EXACT, NOT_OLDER_THAN, ""]))
        if match == EXACT and o.resource_version == "0":
            causes.append(_forbidden("resourceVersionMatch",
                                     'resourceVersionMatch "exact" is forbidden for resourceVersion "0"'))
    if o.send_initial is not None:
        causes.append(_forbidden("sendInitialEvents", "sendInitialEvents is forbidden for list"))
    return causes


def list_options(q: Any, info: ResourceInfo, watch: bool, name: str = "") -> ListOptions:
    """Read and check a list/watch request's parameters; raises the ApiError the real server answers."""
    timeout = _int64(q, "timeoutSeconds")
    limit = _int64(q, "limit") or 0
    label_m = parse_label_selector(q.get("labelSelector"))
    parse_field_selector(q.get("fieldSelector"))  # syntax first, for every kind alike
    opts = ListOptions(
        watch=watch, matcher=None, has_selector=bool(q.get("labelSelector") or q.get("fieldSelector")),
        allow_bookmarks=bool(query_bool(q, "allowWatchBookmarks")),
        resource_version=str(q.get("resourceVersion", "")), rv_match=str(q.get("resourceVersionMatch", "")),
        timeout=timeout, limit=limit, continue_token=str(q.get("continue", "")),
        send_initial=query_bool(q, "sendInitialEvents"),
    )
    causes = _validate(opts)
    if causes:
        summary = causes[0] if len(causes) == 1 else None
        text = (f"{summary['field']}: {summary['message']}" if summary else
                "[" + ", ".join(f"{c['field']}: {c['message']}" for c in causes) + "]")
        raise ApiError(422, f'ListOptions.meta.k8s.io "" is invalid: {text}', "Invalid",
                       {"group": "meta.k8s.io", "kind": "ListOptions", "causes": causes})
    field_m = parse_field_selector(q.get("fieldSelector"), info)
    if name:
        # a named watch (/watch/.../NAME): a field selector may only repeat that name
        terms = [t for t in str(q.get("fieldSelector", "")).split(",") if t]
        exact = [t.replace("==", "=", 1).split("=", 1) for t in terms if "!=" not in t]
        if terms and [name] != [v for k, v in exact if k == "metadata.name"][:1]:
            raise ApiError(400, "fieldSelector metadata.name doesn't match requested name", "BadRequest")
        field_m = combine(field_m, parse_field_selector(f"metadata.name={name}"))
    opts.matcher = combine(label_m, field_m)
    return opts


def parse_resource_version(value: str, info: ResourceInfo, watch: bool) -> int:
    """A resourceVersion parameter as a number; the real server's 400 (list) or 422 (watch) otherwise."""
    if re.fullmatch(r"[0-9]+", value) and int(value) < 2**64:
        return int(value)
    detail = (f'strconv.ParseUint: parsing "{value}": value out of range' if re.fullmatch(r"[0-9]+", value)
              else f'strconv.ParseUint: parsing "{value}": invalid syntax')
    cause = f'Invalid value: "{value}": {detail}'
    if not watch:
        raise ApiError(400, f"invalid resource version: resourceVersion: {cause}", "BadRequest")
    details: dict[str, Any] = {"group": info.group} if info.group else {}
    details.update(kind=info.plural, causes=[{"reason": "FieldValueInvalid", "message": cause,
                                              "field": "resourceVersion"}])
    raise ApiError(422, f'{info.plural} "" is invalid: resourceVersion: {cause}', "Invalid", details)


# -- continue tokens --------------------------------------------------------------------------------
def encode_continue(rv: int, start_key: str) -> str:
    """The token for the page after `start_key` (a key relative to the list's prefix) at `rv`."""
    doc = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start_key + "\x00"}, separators=(",", ":"))
    return base64.urlsafe_b64encode(doc.encode()).decode().rstrip("=")


def _go_char(b: int) -> str:
    """How Go's JSON decoder quotes an unexpected byte in its error message."""
    ch = chr(b)
    if ch == "'":
        return "'\\''"
    if ch == '"':
        return "'\"'"
    if 0x20 <= b < 0x7F:
        return f"'{ch}'"
    return "'" + json.dumps(ch)[1:-1] + "'"


def decode_continue(token: str) -> tuple[int, str]:
    """(resourceVersion, start key) of a continue token; 400 `invalid continue token: ...` if it is not one."""
    def bad(why: str) -> ApiError:
        return ApiError(400, f"invalid continue token: continue key is not valid: {why}", "BadRequest")

    alphabet = re.compile(r"[A-Za-z0-9_-]")
    for i, ch in enumerate(token):
        if not alphabet.match(ch):
            raise bad(f"illegal base64 data at input byte {i}")
    if len(token) % 4 == 1:
        raise bad(f"illegal base64 data at input byte {len(token) - 1}")
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        first = raw.lstrip(b" \t\r\n")[:1]
        if first and first not in b'{["-0123456789tfn':
            raise bad(f"invalid character {_go_char(first[0])} looking for beginning of value") from None
        raise bad("unexpected end of JSON input") from None
    if not isinstance(doc, dict):
        raise bad("json: cannot unmarshal into Go value of type storage.continueToken")
    version = doc.get("v", "")
    if version != "meta.k8s.io/v1":
        raise ApiError(400, "invalid continue token: continue key is not valid: server does not recognize this "
                            f"encoded version {version}", "BadRequest")
    rv, start = doc.get("rv", 0), doc.get("start", "")
    if not isinstance(rv, int) or rv == 0:
        raise ApiError(400, "invalid continue token: continue key is not valid: incorrect encoded start "
                            "resourceVersion (version meta.k8s.io/v1)", "BadRequest")
    if not isinstance(start, str) or not start:
        raise ApiError(400, "invalid continue token: continue key is not valid: encoded start key empty "
                            "(version meta.k8s.io/v1)", "BadRequest")
    return rv, start.removesuffix("\x00")
