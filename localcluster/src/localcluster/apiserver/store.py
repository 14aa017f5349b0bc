"""The in-memory object store: objects, one global resourceVersion counter, event history, watchers.

Objects are stored as plain dicts and never mutated after being stored (every write stores a new
dict), so reads and lists can hand them out without copying. Each stored object is serialised
once; lists, gets and every watcher reuse those bytes.
"""

from __future__ import annotations

import asyncio
import bisect
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from localcluster.apiserver.selectors import Matcher

StoreKey = tuple[str, str]  # (group, plural)


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON. orjson writes an object about ten times faster than `json`; what it refuses
    (integers beyond 64 bits, lone surrogates, non-string keys) goes through `json` as before."""
    try:
        return orjson.dumps(obj)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class Event:
    """One change; the object is serialised once at commit and framed per watcher on demand."""

    __slots__ = ("key", "namespace", "obj", "obj_bytes", "old", "rv", "slim", "type")

    def __init__(
        self, rv: int, etype: str, key: StoreKey, namespace: str, obj: dict[str, Any],
        obj_bytes: bytes, old: dict[str, Any] | None,
    ) -> None:
        self.rv = rv
        self.type = etype
        self.key = key
        self.namespace = namespace
        self.obj = obj
        self.obj_bytes = obj_bytes
        self.old = old
        self.slim = False

    def make_slim(self) -> None:
        """Keep only what replaying needs: the bytes, and the fields selectors look at."""
        if not self.slim:
            self.obj = project(self.obj)
            self.old = project(self.old) if self.old is not None else None
            self.slim = True

    def full_object(self) -> dict[str, Any]:
        obj: dict[str, Any] = json.loads(self.obj_bytes) if self.slim else self.obj
        return obj

    def encoded(self, etype: str) -> bytes:
        # Framing is a cheap concatenation; caching it would double the history's memory.
        return b'{"type":"' + etype.encode() + b'","object":' + self.obj_bytes + b"}\n"


_PROJECTED_TOP = ("involvedObject", "regarding", "reason", "type", "reportingController", "source")


def project(obj: dict[str, Any]) -> dict[str, Any]:
    """The parts of an object that label and common field selectors read (for old history events)."""
    meta = obj.get("metadata") or {}
    out: dict[str, Any] = {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": {k: meta[k] for k in ("name", "namespace", "labels", "resourceVersion", "uid") if k in meta},
    }
    spec, status = obj.get("spec"), obj.get("status")
    if isinstance(spec, dict) and "nodeName" in spec:
        out["spec"] = {"nodeName": spec["nodeName"]}
    if isinstance(status, dict) and "phase" in status:
        out["status"] = {"phase": status["phase"]}
    for k in _PROJECTED_TOP:
        if k in obj:
            out[k] = obj[k]
    return out


@dataclass(eq=False)
class Watcher:
    """A watch connection's subscription; the server drains `queue`."""

    key: StoreKey
    namespace: str | None
    matcher: Matcher | None
    queue: asyncio.Queue[tuple[str, Event] | None] = field(default_factory=asyncio.Queue)

    def classify(self, ev: Event) -> str | None:
        """Which event type this watcher sees for `ev` (selector entry -> ADDED, exit -> DELETED)."""
        if self.namespace is not None and ev.namespace != self.namespace:
            return None
        m = self.matcher
        if m is None:
            return ev.type
        if ev.type == "MODIFIED":
            new_m = m(ev.obj)
            old_m = m(ev.old) if ev.old is not None else False
            if new_m and old_m:
                return "MODIFIED"
            if new_m:
                return "ADDED"
            if old_m:
                return "DELETED"
            return None
        return ev.type if m(ev.obj) else None

    def offer(self, ev: Event) -> None:
        etype = self.classify(ev)
        if etype is not None:
            self.queue.put_nowait((etype, ev))

    def close(self) -> None:
        self.queue.put_nowait(None)


class Store:
    """Objects by (group, plural) -> namespace -> name, plus the event history and watchers."""

    RECENT = 1000  # the newest events keep their full objects; older ones are slimmed

    def __init__(self, history_size: int = 10000, history_bytes: int = 128 * 1024 * 1024) -> None:
        self.rv = 0
        self.objects: dict[StoreKey, dict[str, dict[str, dict[str, Any]]]] = {}
        self._bytes: dict[int, bytes] = {}  # id(obj) -> serialised form of stored objects
        self.history: list[Event] = []
        self._history_rvs: list[int] = []
        self.history_size = history_size
        self.history_bytes = history_bytes
        self._held_bytes = 0
        self.compacted_rv = 0  # events with rv <= this are no longer replayable
        self.watchers: dict[StoreKey, set[Watcher]] = {}
        self.listeners: list[Callable[[Event], None]] = []

    # -- reads ---------------------------------------------------------------------------------
    def get(self, key: StoreKey, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get(key, {}).get(namespace, {}).get(name)

    def encoded(self, obj: dict[str, Any]) -> bytes:
        b = self._bytes.get(id(obj))
        if b is None:
            b = dumps(obj)
        return b

    def iter(self, key: StoreKey, namespace: str | None = None) -> Iterator[dict[str, Any]]:
        by_ns = self.objects.get(key, {})
        if namespace is not None:
            yield from by_ns.get(namespace, {}).values()
            return
        for objs in by_ns.values():
            yield from objs.values()

    def count(self, key: StoreKey, namespace: str | None = None) -> int:
        by_ns = self.objects.get(key, {})
        if namespace is not None:
            return len(by_ns.get(namespace, {}))
        return sum(len(v) for v in by_ns.values())

    def resource_keys(self) -> list[StoreKey]:
        return list(self.objects)

    def find(self, group: str, plural: str, name: str, namespace: str = "") -> dict[str, Any] | None:
        """Convenience for tests: the stored object or None."""
        return self.get((group, plural), namespace, name)

    # -- writes --------------------------------------------------------------------------------
    def next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def commit(
        self, key: StoreKey, namespace: str, name: str, obj: dict[str, Any], etype: str,
        old: dict[str, Any] | None = None,
    ) -> Event:
        """Store (or remove, for DELETED) `obj`, whose metadata.resourceVersion is already set."""
        rv = int(obj["metadata"]["resourceVersion"])
        by_name = self.objects.setdefault(key, {}).setdefault(namespace, {})
        prev = by_name.get(name)
        if prev is not None:
            self._bytes.pop(id(prev), None)
        data = dumps(obj)
        if etype == "DELETED":
            by_name.pop(name, None)
            if not by_name:
                self.objects[key].pop(namespace, None)
        else:
            by_name[name] = obj
            self._bytes[id(obj)] = data
        ev = Event(rv, etype, key, namespace, obj, data, old)
        self.history.append(ev)
        self._history_rvs.append(rv)
        self._held_bytes += len(data)
        if len(self.history) > self.RECENT:
            self.history[-self.RECENT - 1].make_slim()
        if len(self.history) > self.history_size * 2 or self._held_bytes > self.history_bytes:
            self._compact()
        for w in self.watchers.get(key, ()):
            w.offer(ev)
        for listener in self.listeners:
            listener(ev)
        return ev

    def _compact(self) -> None:
        """Forget the oldest events, down to history_size events and 3/4 of the byte budget."""
        cut = max(0, len(self.history) - self.history_size)
        held = self._held_bytes - sum(len(e.obj_bytes) for e in self.history[:cut])
        while cut < len(self.history) - 1 and held > self.history_bytes * 3 // 4:
            held -= len(self.history[cut].obj_bytes)
            cut += 1
        if cut:
            self.compacted_rv = self.history[cut - 1].rv
            del self.history[:cut]
            del self._history_rvs[:cut]
            self._held_bytes = held

    def drop_key(self, key: StoreKey) -> None:
        """Forget every object of a group/plural (CRD removal) without events."""
        for objs in self.objects.pop(key, {}).values():
            for obj in objs.values():
                self._bytes.pop(id(obj), None)

    # -- watch support -------------------------------------------------------------------------
    def events_since(self, key: StoreKey, rv: int) -> list[Event]:
        i = bisect.bisect_right(self._history_rvs, rv)
        return [e for e in self.history[i:] if e.key == key]

    def add_watcher(self, watcher: Watcher) -> None:
        self.watchers.setdefault(watcher.key, set()).add(watcher)

    def remove_watcher(self, watcher: Watcher) -> None:
        self.watchers.get(watcher.key, set()).discard(watcher)

    def drop_watches(self, key: StoreKey | None = None) -> int:
        n = 0
        for k, ws in self.watchers.items():
            if key is None or k == key:
                for w in list(ws):
                    w.close()
                    n += 1
        return n
