"""core/v1 and events.k8s.io/v1 Events are one stored object read through two APIs.

The real server stores Events once and converts between the two shapes; the emulator keeps a copy under
each API's key, written with the same uid and resourceVersion, so that gets, lists and watches of either
API see every Event with its fields renamed as the real conversion renames them.
"""

from __future__ import annotations

from typing import Any

CORE = ("", "events")
EVENTS_V1 = ("events.k8s.io", "events")

# (core/v1 field, events.k8s.io/v1 field); times are kept even when null, the rest only when set.
_FIELDS = [
    ("eventTime", "eventTime"), ("series", "series"), ("reportingComponent", "reportingController"),
    ("reportingInstance", "reportingInstance"), ("action", "action"), ("reason", "reason"),
    ("involvedObject", "regarding"), ("related", "related"), ("message", "note"), ("type", "type"),
    ("source", "deprecatedSource"), ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"), ("count", "deprecatedCount"),
]
_ALWAYS = {"eventTime", "firstTimestamp", "lastTimestamp", "source", "deprecatedSource",
           "deprecatedFirstTimestamp", "deprecatedLastTimestamp"}


def other_key(key: tuple[str, str]) -> tuple[str, str] | None:
    return {CORE: EVENTS_V1, EVENTS_V1: CORE}.get(key)


def convert(obj: dict[str, Any], to: tuple[str, str]) -> dict[str, Any]:
    """The Event as the other API shows it."""
    to_v1 = to == EVENTS_V1
    out: dict[str, Any] = {"apiVersion": "events.k8s.io/v1" if to_v1 else "v1", "kind": "Event",
                           "metadata": obj.get("metadata") or {}}
    for core_name, v1_name in _FIELDS:
        src, dst = (core_name, v1_name) if to_v1 else (v1_name, core_name)
        value = obj.get(src)
        if dst in _ALWAYS:
            out[dst] = {} if value is None and dst in ("source", "deprecatedSource") else value
        elif value not in (None, "", 0, {}):
            out[dst] = value
    return out
