"""Server-side printing (`Accept: ...;as=Table`): printer columns for CRDs and built-in kinds."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from typing import Any

from localcluster.apiserver.resources import ResourceInfo

Column = dict[str, Any]


def parse_time(value: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None


def human_duration(seconds: float) -> str:
    """The apimachinery `HumanDuration` rendering used for AGE columns."""
    s = int(seconds)
    if s < 0:
        return "<invalid>"
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = s // 3600
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    d = h // 24
    if h < 24 * 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    if d < 365 * 2:
        return f"{d}d"
    y = d // 365
    return f"{y}y{d % 365}d" if d % 365 and y < 8 else f"{y}y"


def age(ts: str | None) -> str:
    t = parse_time(ts or "")
    if t is None:
        return "<unknown>"
    return human_duration((dt.datetime.now(dt.UTC) - t).total_seconds())


# -- a small JSONPath: .a.b, [N], [*], [?(@.k=="v")] ------------------------------------------------
_TOKEN_RE = re.compile(r"\.([A-Za-z0-9_\-$]+)|\[(\d+|\*)\]|\[\?\(@\.([A-Za-z0-9_.\-]+)\s*(==|!=)\s*(['\"])(.*?)\5\)\]"
                       r"|\['([^']+)'\]")


def jsonpath(obj: Any, path: str) -> list[Any]:
    """Evaluate a printer-column JSONPath; returns all matches (possibly none)."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    if path.startswith("$"):
        path = path[1:]
    if path and not path.startswith((".", "[")):
        path = "." + path
    current = [obj]
    pos = 0
    while pos < len(path):
        m = _TOKEN_RE.match(path, pos)
        if not m:
            return []
        pos = m.end()
        nxt: list[Any] = []
        name, index, fkey, fop, _, fval, quoted = m.groups()
        for c in current:
            if name is not None or quoted is not None:
                key = name if name is not None else quoted
                if isinstance(c, dict) and key in c:
                    nxt.append(c[key])
            elif index is not None:
                if isinstance(c, list):
                    if index == "*":
                        nxt.extend(c)
                    elif int(index) < len(c):
                        nxt.append(c[int(index)])
            elif fkey is not None and isinstance(c, list):
                for item in c:
                    v: Any = item
                    for part in fkey.split("."):
                        v = v.get(part) if isinstance(v, dict) else None
                    if (str(v) == fval) == (fop == "=="):
                        nxt.append(item)
        current = nxt
    return current


def _cell(value: Any, col_type: str) -> Any:
    if value is None:
        return None
    if col_type == "date" and isinstance(value, str):
        return age(value)
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return value


# -- built-in printers ---------------------------------------------------------------------------------
def _col(name: str, ctype: str = "string", fmt: str = "", priority: int = 0, desc: str = "") -> Column:
    return {"name": name, "type": ctype, "format": fmt, "description": desc or name, "priority": priority}


NAME_COL = _col("Name", fmt="name", desc="Name must be unique within a namespace.")
AGE_COL = _col("Age", desc="CreationTimestamp is a timestamp representing the server time when this object "
                           "was created.")


def _meta(o: dict[str, Any]) -> dict[str, Any]:
    return o.get("metadata") or {}


def pod_status_text(pod: dict[str, Any]) -> str:
    """The STATUS column as kubectl's pod printer computes it."""
    st = pod.get("status") or {}
    reason = st.get("reason") or st.get("phase") or "Unknown"
    for cs in st.get("initContainerStatuses") or []:
        state = cs.get("state") or {}
        if "terminated" in state and state["terminated"].get("exitCode", 0) != 0:
            reason = "Init:" + (state["terminated"].get("reason") or f"ExitCode:{state['terminated']['exitCode']}")
            break
        if "waiting" in state and state["waiting"].get("reason") not in (None, "PodInitializing"):
            reason = "Init:" + state["waiting"]["reason"]
            break
    else:
        has_running = False
        for cs in reversed(st.get("containerStatuses") or []):
            state = cs.get("state") or {}
            if "waiting" in state and state["waiting"].get("reason"):
                reason = state["waiting"]["reason"]
            elif "terminated" in state:
                t = state["terminated"]
                if t.get("reason"):
                    reason = t["reason"]
                elif t.get("signal"):
                    reason = f"Signal:{t['signal']}"
                else:
                    reason = f"ExitCode:{t.get('exitCode', 0)}"
            elif "running" in state and cs.get("ready"):
                has_running = True
        if reason == "Completed" and has_running:
            reason = "Running"
    if _meta(pod).get("deletionTimestamp") and st.get("reason") != "NodeLost":
        reason = "Terminating"
    return str(reason)


def _pod_row(p: dict[str, Any]) -> list[Any]:
    st = p.get("status") or {}
    css = st.get("containerStatuses") or []
    total = len((p.get("spec") or {}).get("containers") or [])
    ready = sum(1 for c in css if c.get("ready"))
    restarts = sum(int(c.get("restartCount", 0)) for c in css)
    ip = st.get("podIP") or "<none>"
    node = (p.get("spec") or {}).get("nodeName") or "<none>"
    return [_meta(p).get("name"), f"{ready}/{total}", pod_status_text(p), restarts,
            age(_meta(p).get("creationTimestamp")), ip, node, "<none>", "<none>"]


def _node_row(n: dict[str, Any]) -> list[Any]:
    conds = {c.get("type"): c.get("status") for c in (n.get("status") or {}).get("conditions") or []}
    status = "Ready" if conds.get("Ready") == "True" else "NotReady"
    if (n.get("spec") or {}).get("unschedulable"):
        status += ",SchedulingDisabled"
    labels = _meta(n).get("labels") or {}
    roles = ",".join(sorted(k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/"))) \
        or "<none>"
    version = ((n.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion", "")
    return [_meta(n).get("name"), status, roles, age(_meta(n).get("creationTimestamp")), version]


def _event_row(e: dict[str, Any]) -> list[Any]:
    ts = e.get("lastTimestamp") or e.get("eventTime") or e.get("deprecatedLastTimestamp") \
        or _meta(e).get("creationTimestamp")
    inv = e.get("involvedObject") or e.get("regarding") or {}
    obj = f"{str(inv.get('kind', '')).lower()}/{inv.get('name', '')}"
    return [age(ts), e.get("type", ""), e.get("reason", ""), obj, e.get("message") or e.get("note", "")]


BUILTIN_PRINTERS: dict[str, tuple[list[Column], Callable[[dict[str, Any]], list[Any]]]] = {
    "pods": (
        [NAME_COL, _col("Ready"), _col("Status"), _col("Restarts", "string"), AGE_COL, _col("IP", priority=1),
         _col("Node", priority=1), _col("Nominated Node", priority=1), _col("Readiness Gates", priority=1)],
        _pod_row,
    ),
    "namespaces": (
        [NAME_COL, _col("Status"), AGE_COL],
        lambda o: [_meta(o).get("name"), (o.get("status") or {}).get("phase", "Active"),
                   age(_meta(o).get("creationTimestamp"))],
    ),
    "configmaps": (
        [NAME_COL, _col("Data", "integer"), AGE_COL],
        lambda o: [_meta(o).get("name"), len(o.get("data") or {}) + len(o.get("binaryData") or {}),
                   age(_meta(o).get("creationTimestamp"))],
    ),
    "secrets": (
        [NAME_COL, _col("Type"), _col("Data", "integer"), AGE_COL],
        lambda o: [_meta(o).get("name"), o.get("type", "Opaque"), len(o.get("data") or {}),
                   age(_meta(o).get("creationTimestamp"))],
    ),
    "events": (
        [_col("Last Seen"), _col("Type"), _col("Reason"), _col("Object"), _col("Message")],
        _event_row,
    ),
    "nodes": (
        [NAME_COL, _col("Status"), _col("Roles"), AGE_COL, _col("Version")],
        _node_row,
    ),
    "customresourcedefinitions": (
        [NAME_COL, _col("Created At", "date")],
        lambda o: [_meta(o).get("name"), _meta(o).get("creationTimestamp")],
    ),
}


def columns_for(info: ResourceInfo) -> tuple[list[Column], Callable[[dict[str, Any]], list[Any]]]:
    """Column definitions and a row function for a resource."""
    if info.custom:
        cols = [NAME_COL]
        getters: list[tuple[str, str]] = []
        for pc in info.printer_columns:
            cols.append(_col(pc.get("name", ""), pc.get("type", "string"), pc.get("format", ""),
                             int(pc.get("priority", 0)), pc.get("description", "")))
            getters.append((pc.get("jsonPath", ""), pc.get("type", "string")))
        if not info.printer_columns:
            cols.append(AGE_COL)
            getters.append((".metadata.creationTimestamp", "date"))

        def row(o: dict[str, Any]) -> list[Any]:
            cells: list[Any] = [_meta(o).get("name")]
            for path, ctype in getters:
                vals = jsonpath(o, path)
                cells.append(_cell(vals[0], ctype) if vals else None)
            return cells

        return cols, row
    if info.plural in BUILTIN_PRINTERS and not (info.plural == "events" and info.group):
        return BUILTIN_PRINTERS[info.plural]
    return [NAME_COL, AGE_COL], lambda o: [_meta(o).get("name"), age(_meta(o).get("creationTimestamp"))]


def partial_metadata(obj: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": _meta(obj)}


def make_table(
    info: ResourceInfo, objs: list[dict[str, Any]], api_version: str, rv: str,
    include_object: str = "Metadata", cont: str | None = None, with_columns: bool = True,
) -> dict[str, Any]:
    cols, row = columns_for(info)
    rows = []
    for o in objs:
        r: dict[str, Any] = {"cells": row(o)}
        if include_object == "Object":
            r["object"] = o
        elif include_object != "None":
            r["object"] = partial_metadata(o)
        rows.append(r)
    meta: dict[str, Any] = {"resourceVersion": rv}
    if cont:
        meta["continue"] = cont
    table: dict[str, Any] = {"kind": "Table", "apiVersion": api_version, "metadata": meta, "rows": rows}
    table["columnDefinitions"] = cols if with_columns else []
    return table
