"""Watch BOOKMARK events: what they look like and when they are sent.

A bookmark carries an empty object of the watched kind with only a resourceVersion, serialised the way
the real server serialises an empty object of that kind: typed kinds keep their non-omitempty fields
(a Pod bookmark has `"spec":{"containers":null},"status":{}`), custom resources only apiVersion, kind
and metadata. The real watch cache sends one about 2 s before the watch's timeout and otherwise once a
minute, and only when the resource had an event after the watch's resourceVersion: a quiet watch gets
none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from localcluster.apiserver.store import dumps

if TYPE_CHECKING:
    from localcluster.apiserver.resources import ResourceInfo

INITIAL_EVENTS_END = "k8s.io/initial-events-end"
BEFORE_TIMEOUT = 2.0  # seconds before the watch's deadline

_NAMES = {"plural": "", "kind": ""}
# What an empty object of a built-in kind serialises to besides kind, apiVersion and metadata.
_EMPTY: dict[tuple[str, str], dict[str, Any]] = {
    ("", "pods"): {"spec": {"containers": None}, "status": {}},
    ("", "namespaces"): {"spec": {}, "status": {}},
    ("", "services"): {"spec": {}, "status": {"loadBalancer": {}}},
    ("", "nodes"): {"spec": {}, "status": {"daemonEndpoints": {"kubeletEndpoint": {"Port": 0}}, "nodeInfo": {
        "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": "",
        "containerRuntimeVersion": "", "kubeletVersion": "", "kubeProxyVersion": "", "operatingSystem": "",
        "architecture": ""}}},
    ("", "events"): {"involvedObject": {}, "source": {}, "firstTimestamp": None, "lastTimestamp": None,
                     "eventTime": None, "reportingComponent": "", "reportingInstance": ""},
    ("events.k8s.io", "events"): {"eventTime": None, "regarding": {}, "deprecatedSource": {},
                                  "deprecatedFirstTimestamp": None, "deprecatedLastTimestamp": None},
    ("coordination.k8s.io", "leases"): {"spec": {}},
    ("networking.k8s.io", "networkpolicies"): {"spec": {"podSelector": {}}},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {
        "spec": {"group": "", "names": _NAMES, "scope": "", "versions": None},
        "status": {"acceptedNames": _NAMES, "storedVersions": None}},
}


def bookmark(info: ResourceInfo, rv: int, initial_end: bool = False) -> bytes:
    """One BOOKMARK line at `rv`; `initial_end` marks the end of a watch's initial events."""
    meta: dict[str, Any] = {"resourceVersion": str(rv)}
    if initial_end:
        meta["annotations"] = {INITIAL_EVENTS_END: "true"}
    obj: dict[str, Any]
    if info.custom:  # unstructured: keys in sorted order
        obj = {"apiVersion": info.api_version, "kind": info.kind, "metadata": dict(sorted(meta.items()))}
    else:
        obj = {"kind": info.kind, "apiVersion": info.api_version, "metadata": meta,
               **_EMPTY.get(info.store_key, {})}
    return dumps({"type": "BOOKMARK", "object": obj}) + b"\n"


def next_bookmark(now: float, deadline: float | None, frequency: float) -> float | None:
    """When the next periodic bookmark is due: after `frequency`, or 2 s before the deadline if sooner;
    None when that moment has already passed (no bookmark in the last 2 s of a watch)."""
    due = now + frequency
    if deadline is not None:
        due = min(due, deadline - BEFORE_TIMEOUT)
    return due if due >= now else None
