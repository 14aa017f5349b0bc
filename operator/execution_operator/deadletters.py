"""DeadLetters: one snapshot per terminally failed Execution, replay on request, retention without polling.

A DeadLetter outlives its Execution (no owner reference) so the evidence survives the Execution's TTL
and its pods. Everything here is idempotent by construction, because kopf redelivers events and the
operator may crash between any two API calls:

- The DeadLetter's name is derived from the Execution's uid, so a repeated `record` finds the first one
  (409 AlreadyExists) instead of making a second.
- A replay request (annotation `sandbox.dev/replay=true`) is first *consumed* in one resourceVersion-
  guarded metadata patch that swaps it for `sandbox.dev/replay-pending=<n>`; only then is Execution `n`
  created (deterministic name, 409 = already made) and recorded in `status.replays`, and the pending
  marker removed. A redelivered event carries an old resourceVersion, so its consume fails with 409 and
  the re-read shows the request already taken: one annotation makes exactly one Execution, even across
  a crash at any point.
- Retention keeps an in-memory index per namespace fed by the watch (including kopf's initial listing),
  schedules each deletion with `loop.call_at` at creation + max age, and deletes the oldest first when a
  namespace holds more than the cap. Deletes carry a uid precondition so a re-created object of the same
  name is never removed by an old timer.

The objects themselves (the DeadLetter, the replay Execution, their names and size bounds) are built by
the pure functions of `deadletter_build`; this module makes the API calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import structlog

from execution_operator import metrics, safejson
from execution_operator.api import (
    ANNOTATION_REPLAY,
    ANNOTATION_REPLAY_PENDING,
    API_VERSION,
    DEAD_LETTERS,
    EXECUTIONS,
    EventReason,
    EventType,
    Kind,
)
from execution_operator.deadletter_build import (
    ReplayRefused,
    build_dead_letter,
    next_replay_number,
    replay_execution,
    replay_name,
    wants_dead_letter,
)
from execution_operator.k8s import ApiError, KubeClient, path_for, post_event
from execution_operator.models import DeadLetterPolicy, DeadLetterStatus, Replay, rfc3339
from execution_operator.timestamps import parse_time

log = structlog.get_logger("execution_operator.deadletters")

DEFAULT_MAX_AGE_SECONDS: Final = 7 * 24 * 3600
DEFAULT_MAX_PER_NAMESPACE: Final = 1000
_CONFLICT_RETRIES: Final = 8
#: Seconds before a failed retention delete is tried again.
RETENTION_RETRY_SECONDS: Final = 30.0


def _now_utc() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Entry:
    uid: str | None
    created: datetime
    timer: asyncio.TimerHandle | None = None
    deleting: bool = False


class DeadLetters:
    """Creates DeadLetters, carries out replays and enforces retention; shares the controller's client.

    `on_event` must see every DeadLetter watch event (kopf `on.event`, including the initial listing);
    the retention index lives in memory and is rebuilt from that listing after a restart.
    """

    def __init__(
        self,
        client: KubeClient,
        *,
        clock: Callable[[], datetime] = _now_utc,
        max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
        max_per_namespace: int = DEFAULT_MAX_PER_NAMESPACE,
        retry_seconds: float = RETENTION_RETRY_SECONDS,
    ) -> None:
        if max_age_seconds <= 0 or max_per_namespace < 1:
            raise ValueError("dead letter retention needs a positive max age and a cap of at least 1")
        self.client = client
        self.clock = clock
        self.max_age = timedelta(seconds=max_age_seconds)
        self.max_per_namespace = max_per_namespace
        self.retry_seconds = retry_seconds
        self._index: dict[str, dict[str, _Entry]] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- record ------------------------------------------------------------------------------------

    async def record(
        self, execution: Mapping[str, Any], policy: DeadLetterPolicy | str, *, class_label: str | None = None
    ) -> str | None:
        """Create the DeadLetter of a failed Execution if the policy wants one; return its name.

        Idempotent: the name comes from the uid, so a second call (a redelivered event, a restart) gets
        409 AlreadyExists and returns the same name. An Execution whose status already names its
        DeadLetter is not recorded again, so a purged DeadLetter does not come back after a restart.
        `class_label` is the class as the metrics name it (a class that exists, else `unknown`).
        """
        status = execution.get("status") or {}
        error_type = (status.get("error") or {}).get("type")
        if not wants_dead_letter(policy, str(status.get("phase") or ""), error_type):
            return None
        if status.get("deadLetterName"):
            return str(status["deadLetterName"])
        class_name = str((execution.get("spec") or {}).get("executionClassName") or "default")
        body = build_dead_letter(execution, class_name, rfc3339(self.clock()))
        name = str(body["metadata"]["name"])
        namespace = str(body["metadata"].get("namespace") or "default")
        try:
            await self.client.post(path_for(API_VERSION, DEAD_LETTERS, namespace), body)
        except ApiError as exc:
            if not exc.already_exists:
                raise
            return name
        metrics.record_dead_letter(namespace, class_label or class_name, body["spec"]["error"]["type"])
        log.info(
            "dead letter recorded",
            namespace=namespace,
            dead_letter=name,
            execution=body["spec"]["executionRef"]["name"],
            error_type=body["spec"]["error"]["type"],
        )
        return name

    # -- events ------------------------------------------------------------------------------------

    async def on_event(self, body: Mapping[str, Any], event_type: str | None) -> None:
        """Feed retention and carry out a requested replay; safe to call again with any old event."""
        meta = body.get("metadata") or {}
        name = meta.get("name")
        if not name:
            return
        namespace = str(meta.get("namespace") or "default")
        if event_type == "DELETED" or meta.get("deletionTimestamp"):
            self._forget(namespace, str(name))
            self._locks.pop((namespace, str(name)), None)
            return
        self._remember(namespace, str(name), meta)
        annotations = meta.get("annotations") or {}
        if annotations.get(ANNOTATION_REPLAY) == "true" or ANNOTATION_REPLAY_PENDING in annotations:
            lock = self._locks.setdefault((namespace, str(name)), asyncio.Lock())
            async with lock:
                await self._replay(namespace, str(name), body)

    # -- replay ------------------------------------------------------------------------------------

    def _path(self, namespace: str, name: str, sub: str | None = None) -> str:
        return path_for(API_VERSION, DEAD_LETTERS, namespace, name, sub)

    async def _replay(self, namespace: str, name: str, body: Mapping[str, Any]) -> None:
        """Drive the replay state machine on the freshest view until no request is left."""
        current: Mapping[str, Any] | None = body
        for _ in range(_CONFLICT_RETRIES):
            if current is None:
                return
            annotations = (current.get("metadata") or {}).get("annotations") or {}
            try:
                if ANNOTATION_REPLAY_PENDING in annotations:
                    current = await self._finish_pending(namespace, name, current)
                elif annotations.get(ANNOTATION_REPLAY) == "true":
                    current = await self._consume_request(namespace, name, current)
                else:
                    return
            except ApiError as exc:
                if exc.not_found:
                    return  # the DeadLetter was purged meanwhile
                if not exc.conflict:
                    raise
                current = await self._reread(namespace, name)
        log.warning("replay gave up after repeated conflicts", namespace=namespace, dead_letter=name)

    async def _reread(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.client.get(self._path(namespace, name))
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    async def _original_input(self, namespace: str, dead_letter: Mapping[str, Any]) -> Any | None:
        """The original Execution's input, if that very Execution (same uid) still exists."""
        ref = (dead_letter.get("spec") or {}).get("executionRef") or {}
        try:
            original = await self.client.get(path_for(API_VERSION, EXECUTIONS, namespace, str(ref.get("name"))))
        except ApiError as exc:
            if exc.not_found:
                return None
            raise
        if ref.get("uid") and (original.get("metadata") or {}).get("uid") != ref["uid"]:
            return None
        return (original.get("spec") or {}).get("input")

    async def _consume_request(self, namespace: str, name: str, current: Mapping[str, Any]) -> dict[str, Any]:
        """Swap `replay=true` for `replay-pending=<n>` in one guarded write (or refuse the replay)."""
        meta = current.get("metadata") or {}
        replays = list((current.get("status") or {}).get("replays") or [])
        number = next_replay_number(replays)
        pending: str | None = str(number)
        truncated = bool((current.get("spec") or {}).get("inputTruncated"))
        clipped = safejson.quarantined(current)  # decoded with its deepest values cut: never copied
        if clipped or (truncated and await self._original_input(namespace, current) is None):
            pending = None
        patch = {
            "metadata": {
                "resourceVersion": meta.get("resourceVersion"),
                "annotations": {ANNOTATION_REPLAY: None, ANNOTATION_REPLAY_PENDING: pending},
            }
        }
        updated = await self.client.patch(self._path(namespace, name), patch)
        if pending is None:
            await self._event(
                current,
                EventType.WARNING,
                EventReason.REPLAY_REFUSED,
                f"{clipped} is nested too deep for the operator to read; create a new Execution instead"
                if clipped else
                "the snapshot's input was too large to keep and the original Execution is gone; "
                "create a new Execution with the input instead",
            )
            log.warning("replay refused: input not kept and original gone", namespace=namespace, dead_letter=name)
        return updated

    async def _finish_pending(self, namespace: str, name: str, current: Mapping[str, Any]) -> dict[str, Any]:
        """Create Execution n (409 = made before), record it in status, then clear the pending marker."""
        meta = current.get("metadata") or {}
        raw = str((meta.get("annotations") or {}).get(ANNOTATION_REPLAY_PENDING, ""))
        number = int(raw) if raw.isdigit() and int(raw) > 0 else None
        replays = list((current.get("status") or {}).get("replays") or [])
        if number is not None:
            target = replay_name(name, number)
            if not any(entry.get("name") == target for entry in replays):
                original = None
                if (current.get("spec") or {}).get("inputTruncated"):
                    original = await self._original_input(namespace, current)
                try:
                    manifest = replay_execution(current, number, original)
                except ReplayRefused as exc:
                    await self._event(current, EventType.WARNING, EventReason.REPLAY_REFUSED, str(exc))
                else:
                    created = await self._create_execution(namespace, manifest)
                    entry = Replay(name=target, time=rfc3339(self.clock()))
                    status = DeadLetterStatus.model_validate({"replays": [*replays, entry.to_k8s()]})
                    current = await self.client.patch(
                        self._path(namespace, name, "status"),
                        {"metadata": {"resourceVersion": meta.get("resourceVersion")}, "status": status.to_k8s()},
                    )
                    meta = current.get("metadata") or {}
                    log.info(
                        "dead letter replayed",
                        namespace=namespace,
                        dead_letter=name,
                        execution=target,
                        replay=number,
                        created=created,
                    )
                    await self._event(current, EventType.NORMAL, EventReason.REPLAYED,
                                      f"created Execution {target} (replay {number})")
        return await self.client.patch(
            self._path(namespace, name),
            {
                "metadata": {
                    "resourceVersion": meta.get("resourceVersion"),
                    "annotations": {ANNOTATION_REPLAY_PENDING: None},
                }
            },
        )

    async def _create_execution(self, namespace: str, manifest: dict[str, Any]) -> bool:
        """Create the replay Execution; False when an earlier try already made it."""
        try:
            await self.client.post(path_for(API_VERSION, EXECUTIONS, namespace), manifest)
        except ApiError as exc:
            if exc.already_exists:
                return False
            raise
        return True

    async def _event(self, body: Mapping[str, Any], etype: str, reason: str, message: str) -> None:
        meta = body.get("metadata") or {}
        about = {
            "apiVersion": API_VERSION,
            "kind": Kind.DEAD_LETTER,
            "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "resourceVersion")},
        }
        await post_event(self.client, about, etype, reason, message, self.clock())

    # -- retention ---------------------------------------------------------------------------------

    def present(self, namespace: str) -> int:
        """DeadLetters known in a namespace (not counting ones being deleted)."""
        return sum(1 for e in self._index.get(namespace, {}).values() if not e.deleting)

    def _remember(self, namespace: str, name: str, meta: Mapping[str, Any]) -> None:
        entries = self._index.setdefault(namespace, {})
        uid = meta.get("uid")
        known = entries.get(name)
        if known is not None and known.uid == uid:
            return
        if known is not None:  # the same name, a new object: the old timer is not its timer
            self._forget(namespace, name)
            entries = self._index.setdefault(namespace, {})
        created = parse_time(meta.get("creationTimestamp")) or self.clock()
        entry = _Entry(uid=str(uid) if uid else None, created=created)
        entries[name] = entry
        delay = (created + self.max_age - self.clock()).total_seconds()
        if delay <= 0:
            self._start_delete(namespace, name, "age")
        else:
            loop = asyncio.get_running_loop()
            entry.timer = loop.call_at(loop.time() + delay, self._expire_soon, namespace, name, entry.uid)
        self._enforce_cap(namespace)
        metrics.set_dead_letters_present(namespace, self.present(namespace))

    def _forget(self, namespace: str, name: str) -> None:
        entries = self._index.get(namespace)
        if entries is None or name not in entries:
            return
        entry = entries.pop(name)
        if entry.timer is not None:
            entry.timer.cancel()
        if not entries:
            del self._index[namespace]
        metrics.set_dead_letters_present(namespace, self.present(namespace))

    def _enforce_cap(self, namespace: str) -> None:
        """Delete the oldest beyond the cap.

        Correct even mid-listing: an entry with at least `max_per_namespace` newer ones among those seen
        has at least that many newer ones overall, so it is over the cap whatever comes next.
        """
        live = [(e.created, n) for n, e in self._index.get(namespace, {}).items() if not e.deleting]
        excess = len(live) - self.max_per_namespace
        for _, name in sorted(live)[: max(excess, 0)]:
            self._start_delete(namespace, name, "count")

    def _retry_delete(self, namespace: str, name: str, uid: str | None) -> None:
        """After a failed delete: age and cap are decided again from scratch."""
        entry = self._index.get(namespace, {}).get(name)
        if entry is None or entry.uid != uid:
            return
        if self.clock() >= entry.created + self.max_age:
            self._expire_soon(namespace, name, uid)
        else:
            self._enforce_cap(namespace)
            if not entry.deleting:
                delay = (entry.created + self.max_age - self.clock()).total_seconds()
                loop = asyncio.get_running_loop()
                entry.timer = loop.call_later(max(delay, 0.0), self._expire_soon, namespace, name, uid)

    def _expire_soon(self, namespace: str, name: str, uid: str | None) -> None:
        entry = self._index.get(namespace, {}).get(name)
        if entry is not None and entry.uid == uid and not entry.deleting:
            self._start_delete(namespace, name, "age")

    def _start_delete(self, namespace: str, name: str, why: str) -> None:
        """Mark the entry as going (so the cap stops counting it) and delete it in a task."""
        entry = self._index.get(namespace, {}).get(name)
        if entry is None or entry.deleting:
            return
        entry.deleting = True
        task = asyncio.get_running_loop().create_task(self._delete(namespace, name, entry, why))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _delete(self, namespace: str, name: str, entry: _Entry, why: str) -> None:
        """Delete one DeadLetter (uid-guarded); a failure un-marks it and schedules another try."""
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if entry.uid:
            body["preconditions"] = {"uid": entry.uid}
        try:
            await self.client.delete(self._path(namespace, name), body)
            log.info("dead letter deleted by retention", namespace=namespace, dead_letter=name, why=why)
        except Exception as exc:  # noqa: BLE001 - a timer task has nobody to raise to
            gone = isinstance(exc, ApiError) and (exc.not_found or exc.status == 409)  # 409: another uid now
            if not gone:
                entry.deleting = False
                log.warning(
                    "dead letter not deleted; will retry",
                    namespace=namespace,
                    dead_letter=name,
                    why=why,
                    error=str(exc)[:200],
                )
                loop = asyncio.get_running_loop()
                if entry.timer is not None:
                    entry.timer.cancel()
                entry.timer = loop.call_later(self.retry_seconds, self._retry_delete, namespace, name, entry.uid)
                return
        if self._index.get(namespace, {}).get(name) is entry:
            self._forget(namespace, name)

    async def drain(self) -> None:
        """Wait for the deletions started so far (tests; shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def close(self) -> None:
        """Cancel every retention timer (operator shutdown)."""
        for entries in self._index.values():
            for entry in entries.values():
                if entry.timer is not None:
                    entry.timer.cancel()
        for task in list(self._tasks):
            task.cancel()
