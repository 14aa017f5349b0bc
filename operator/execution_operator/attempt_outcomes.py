"""What becomes of an attempt: its pod observed, its verdict carried out, a cancel, the work after the end.

`Outcomes.observe_pod` follows the attempt's pod (Running, stuck pending, finished: its log read and
classified); `attempt_done` carries out the plan `attempt_plan.plan_after_attempt` makes of the verdict
(a retry, or the end with its DeadLetter), each concern in its own step: the status write, the metrics,
the Event, the log line. `after_terminal` drops what the finished Execution no longer needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import pydantic
import structlog

from execution_operator import metrics, safejson
from execution_operator import status as st
from execution_operator.api import API_VERSION, EXECUTIONS, EventReason, EventType, Launch, Phase
from execution_operator.attempt_plan import EndPlan, RetryPlan, end_event, plan_after_attempt, retry_event
from execution_operator.bodies import Key, class_name_of, container_started_at, duration_seconds
from execution_operator.classify import (
    Verdict,
    classify_finished_pod,
    classify_stuck_pod,
    pod_finished,
    report_lines_expected,
)
from execution_operator.deadletters import DeadLetters
from execution_operator.errors import ErrorInfo, ErrorType
from execution_operator.k8s import ApiError, path_for, resource_version
from execution_operator.models import DeadLetterPolicy, ExecutionClassSpec
from execution_operator.reconcile_state import LOG_TAIL_LINES, ReconcilePass, ReconcileState
from execution_operator.report_parsing import log_holds_full_report
from execution_operator.status import parse_time, rfc3339
from execution_operator.warmpool import PAYLOAD_MARKER

#: The controller's log lines keep one logger, whichever module writes them.
log = structlog.get_logger("execution_operator.controller")

#: The runtime copies stdout and stderr to the log apart, so up to a pipe's worth of the code's stderr
#: can land after the runner's report line; when the short tail misses it, a longer one is read.
LOG_TAIL_LINES_WIDE = 2000
#: Reconciles in a row that may fail to read a finished pod's log before the attempt ends without it
#: (each after the client's own retries, the controller's RECONCILE_ERROR_BACKOFF apart: about 20 s in all).
LOG_READ_ROUNDS = 5


class Outcomes:
    """Observes attempts and carries out what follows them, on the controller's shared state."""

    def __init__(self, state: ReconcileState, *, dead_letters: DeadLetters | None, rng: random.Random) -> None:
        self.state = state
        self.dead_letters = dead_letters
        self.rng = rng

    # ----------------------------------------------------------------- the attempt's pod

    async def observe_pod(self, ctx: ReconcilePass, attempt: int, pod: dict[str, Any]) -> None:
        """The next step for the attempt's pod: finished, running, or still pending (maybe stuck)."""
        if pod_finished(pod):
            await self._pod_finished(ctx, attempt, pod)
            return
        started = container_started_at(pod)
        if started:
            if ctx.status.get("phase") != Phase.RUNNING:
                await self._running(ctx, attempt, started)
            return
        await self._pending(ctx, attempt, pod)

    async def _pod_finished(self, ctx: ReconcilePass, attempt: int, pod: dict[str, Any]) -> None:
        """Classify the finished pod from its status and log, and carry out the verdict."""
        spec, _ = ctx.require()
        log_tail, unreadable = await self._read_log(ctx, pod)
        verdict = classify_finished_pod(pod, log_tail, cancel_requested=spec.cancel, attempt=attempt)
        if unreadable is not None and verdict.success:
            verdict = _unconfirmed_success(verdict, unreadable, pod["metadata"]["name"], attempt)
        if verdict.user_code_started_at and ctx.status.get("phase") != Phase.RUNNING:
            await self.user_code_started(ctx, attempt, verdict.user_code_started_at)
        await self.attempt_done(ctx, attempt, verdict, pod=pod)

    async def _read_log(self, ctx: ReconcilePass, pod: Mapping[str, Any]) -> tuple[str | None, ApiError | None]:
        """The finished pod's log tail, or (after LOG_READ_ROUNDS failed reconciles) None and why.

        The report takes `reportLines` lines at the end of the log; other lines (a lagging stream) may
        sit between them, so a margin more is read, and much more if pieces are missing.
        """
        name = pod["metadata"]["name"]
        lines = (report_lines_expected(pod) or 0) + LOG_TAIL_LINES
        try:
            log_tail: str | None = await self.state.log_tail(ctx.key[0], name, lines)
            if log_tail is not None and not log_holds_full_report(log_tail):
                wide = max(LOG_TAIL_LINES_WIDE, 4 * lines)
                log_tail = await self.state.log_tail(ctx.key[0], name, wide) or log_tail
        except ApiError as exc:
            if not exc.not_found and self.state.error_counts.get(ctx.key, 0) + 1 < LOG_READ_ROUNDS:
                raise  # read again after a backoff: the outcome waits for the complete evidence
            return None, exc
        return log_tail, None

    async def _running(self, ctx: ReconcilePass, attempt: int, started: str) -> None:
        """The sandbox container started: the Execution is Running."""
        patch = st.running(ctx.status, attempt=attempt, started_at=started, now=ctx.now,
                           generation=ctx.generation, correlation_id=ctx.correlation_id)
        await self.state.patch_status(ctx.key, ctx.body, patch)
        self.state.track_phase(ctx.key, ctx.class_name, Phase.RUNNING)
        await self.user_code_started(ctx, attempt, started)

    async def _pending(self, ctx: ReconcilePass, attempt: int, pod: dict[str, Any]) -> None:
        """A pod not started yet: end the attempt if it is stuck, else wake at its pending timeout."""
        _, cls = ctx.require()
        created = parse_time(pod["metadata"].get("creationTimestamp")) or self.state.clock()
        pending_for = (self.state.clock() - created).total_seconds()
        error = classify_stuck_pod(pod, pending_seconds=pending_for, pending_timeout=cls.pending_timeout_seconds)
        if error is not None:
            verdict = Verdict(success=False, error=error, exit_code=None, exit_code_source="unknown")
            await self.attempt_done(ctx, attempt, verdict, pod=pod, delete_pod=True)
            return
        self.state.wake_at(ctx.key, created + timedelta(seconds=cls.pending_timeout_seconds + 0.5))

    async def user_code_started(self, ctx: ReconcilePass, attempt: int, started_at: str,
                                launch: str = Launch.COLD) -> None:
        """The attempt reached the user's code: its launch latency, and a success for the class's breaker."""
        created = parse_time(ctx.body["metadata"].get("creationTimestamp"))
        started = parse_time(started_at)
        if created and started:
            metrics.record_launch_latency(self.state.class_label(ctx.class_name),
                                          max(0.0, (started - created).total_seconds()), launch)
        await self.state.gates.record(ctx.class_name, ctx.key, attempt, reached_user_code=True)

    # ----------------------------------------------------------------- after the verdict

    async def attempt_done(
        self,
        ctx: ReconcilePass,
        attempt: int,
        verdict: Verdict,
        *,
        pod: dict[str, Any] | None,
        delete_pod: bool = False,
        not_before: datetime | None = None,
    ) -> None:
        """Carry out what follows the attempt's verdict: a retry, or the end (then `pod` goes if asked).

        `not_before` is the earliest next attempt of a launch the breaker refused (its retryAt).
        """
        spec, _ = ctx.require()
        if not verdict.user_code_started_at:
            # A launch that never reached the user's code: a breaker failure if its type says so.
            await self.state.gates.record(ctx.class_name, ctx.key, attempt, reached_user_code=False,
                                          error=verdict.error)
        plan = plan_after_attempt(verdict, spec.retry, attempt=attempt,
                                  disruptions=int(ctx.status.get("disruptions") or 0), now=self.state.clock(),
                                  rng=self.rng, not_before=not_before)
        if isinstance(plan, RetryPlan):
            await self._retry(ctx, attempt, verdict, plan)
        else:
            await self._end(ctx, attempt, verdict, plan)
        if delete_pod and pod is not None:
            await self.state.delete_pod(ctx.key[0], pod["metadata"]["name"])

    async def _retry(self, ctx: ReconcilePass, attempt: int, verdict: Verdict, plan: RetryPlan) -> None:
        """Write Retrying with nextAttemptAt, count the retry, say so, and wake then."""
        error = verdict.error
        assert error is not None
        next_at = rfc3339(plan.next_attempt_at)
        patch = st.retrying(ctx.status, verdict=verdict, attempt=attempt, next_attempt_at=next_at,
                            now=ctx.now, generation=ctx.generation, correlation_id=ctx.correlation_id,
                            disruptions=plan.disruptions)
        updated = await self.state.patch_status(ctx.key, ctx.body, patch)
        self.state.track_phase(ctx.key, ctx.class_name, Phase.RETRYING)
        metrics.record_retry(self.state.class_label(ctx.class_name), error.type)
        self.state.event(updated, *retry_event(attempt, error, plan.next_attempt_at))
        log.info("retrying", namespace=ctx.key[0], execution=ctx.key[1], attempt=attempt,
                 correlation_id=ctx.correlation_id, error_type=str(error.type), next_attempt_at=next_at)
        self.state.wake_at(ctx.key, plan.next_attempt_at)

    async def _end(self, ctx: ReconcilePass, attempt: int, verdict: Verdict, plan: EndPlan) -> None:
        """Write the terminal status (naming the DeadLetter made first), count it, say so, then tidy up."""
        patch = st.finished(ctx.status, verdict=verdict, attempt=attempt, now=ctx.now,
                            generation=ctx.generation, correlation_id=ctx.correlation_id)
        dead_letter = await self._dead_letter_first(ctx, patch) if plan.dead_letter else None
        if dead_letter:
            patch["deadLetterName"] = dead_letter
        updated = await self.state.patch_status(ctx.key, ctx.body, patch)
        self._count_end(ctx, verdict, plan, updated)
        self.state.event(updated, *end_event(verdict, plan, attempt, dead_letter))
        error = verdict.error
        log.info("finished", namespace=ctx.key[0], execution=ctx.key[1], attempt=attempt,
                 correlation_id=ctx.correlation_id, phase=patch["phase"],
                 error_type=str(error.type) if error else None)
        await self.after_terminal(ctx.key, updated)

    async def _dead_letter_first(self, ctx: ReconcilePass, patch: Mapping[str, Any]) -> str | None:
        """The DeadLetter of the Execution as the terminal `patch` leaves it, before that write.

        So its name goes into the same (terminal) status write; after a crash in between, the same
        decision finds it again (its name comes from the uid).
        """
        ended = dict(ctx.body, status={**ctx.status, **{k: v for k, v in patch.items() if v is not None}})
        return await self.record_dead_letter(ended)

    def _count_end(self, ctx: ReconcilePass, verdict: Verdict, plan: EndPlan, updated: Mapping[str, Any]) -> None:
        """The terminal metrics, and the Execution leaves the in-flight gauge."""
        error = verdict.error
        metrics.record_terminal(ctx.key[0], self.state.class_label(ctx.class_name), plan.outcome,
                                error.type if error else None, duration_seconds(updated))
        self.state.track_phase(ctx.key, ctx.class_name, None)

    async def cancel(self, ctx: ReconcilePass, attempt: int) -> None:
        """spec.cancel: end the Execution Cancelled (with the streams so far) and delete its pod."""
        pod_key = (ctx.key[0], str(ctx.status.get("podName") or ""))
        pod = self.state.pods.get(pod_key) if pod_key[1] else None
        stdout = await self._streams_so_far(*pod_key) if pod is not None and not pod_finished(pod) else ""
        verdict = Verdict(
            success=False,
            error=ErrorInfo.of(ErrorType.CANCELLED, "Cancelled by spec.cancel",
                               podName=pod_key[1] or None, attempt=attempt or None),
            exit_code=None,
            exit_code_source="unknown",
            stdout=stdout,
            stderr="",
        )
        await self.attempt_done(ctx, max(attempt, 1), verdict, pod=pod, delete_pod=pod is not None)

    async def _streams_so_far(self, namespace: str, name: str) -> str:
        """The running pod's output so far (without the runner's own lines), "" when unreadable."""
        tail = None
        with contextlib.suppress(ApiError):  # the streams so far are a courtesy; the cancel is not
            tail = await self.state.log_tail(namespace, name, lines=200)
        if not tail:
            return ""
        stdout = "\n".join(line for line in tail.splitlines()
                           if not line.startswith(("SANDBOX-REPORT ", PAYLOAD_MARKER)))
        return stdout[-16384:]

    async def invalid(self, ctx: ReconcilePass, message: str) -> None:
        """End the Execution Failed with validation_error: nothing is launched."""
        error = ErrorInfo.of(ErrorType.VALIDATION_ERROR, message)
        patch = st.invalid(ctx.status, error=error, now=ctx.now, generation=ctx.generation,
                           correlation_id=ctx.correlation_id)
        updated = await self.state.patch_status(ctx.key, ctx.body, patch)
        self.state.event(updated, EventType.WARNING, EventReason.INVALID, message)
        metrics.record_terminal(ctx.key[0], self.state.class_label(ctx.class_name), "failed",
                                ErrorType.VALIDATION_ERROR, 0.0)
        self.state.track_phase(ctx.key, ctx.class_name, None)
        await self.after_terminal(ctx.key, updated)

    # ----------------------------------------------------------------- after the end

    async def after_terminal(self, key: Key, body: Mapping[str, Any]) -> None:
        """Work that follows the end: the DeadLetter, TTL deletion, then drop the cached body."""
        status = body.get("status") or {}
        self.state.cancel_timer(key)  # a pending-timeout or retry wake-up has nothing left to do
        await self.state.stop_leftover_pod(key[0], status.get("podName"))
        for record in status.get("attempts") or []:
            if record.get("podName"):
                self.state.pods.pop((key[0], str(record["podName"])), None)
                self.state.vanished.pop((key[0], str(record["podName"])), None)
        if status.get("phase") == Phase.FAILED and not status.get("deadLetterName") and self.dead_letters:
            body = await self._late_dead_letter(key, body)
        if await self._delete_when_due(key, body):
            return
        self.state.executions.pop(key, None)
        self.state.finished[key] = (str(body["metadata"].get("uid")), resource_version(body))
        self.state.track_phase(key, None, None)

    async def _late_dead_letter(self, key: Key, body: Mapping[str, Any]) -> Mapping[str, Any]:
        """The DeadLetter of an Execution that ended before DeadLetters were recorded with the terminal write."""
        name = await self.record_dead_letter(body)
        if not name:
            return body
        updated = await self.state.patch_status(key, body, {"deadLetterName": name})
        self.state.event(updated, EventType.WARNING, EventReason.DEAD_LETTERED, f"Copied to DeadLetter {name}")
        return updated

    async def _delete_when_due(self, key: Key, body: Mapping[str, Any]) -> bool:
        """ttlSecondsAfterFinished: delete the Execution once due (True: it is forgotten), else wake then."""
        ttl = (body.get("spec") or {}).get("ttlSecondsAfterFinished")
        finished_at = parse_time((body.get("status") or {}).get("completionTime"))
        if ttl is None or finished_at is None:
            return False
        due = finished_at + timedelta(seconds=int(ttl))
        if due > self.state.clock():
            self.state.wake_at(key, due)
            return False
        with contextlib.suppress(ApiError):
            await self.state.client.delete(
                path_for(API_VERSION, EXECUTIONS, key[0], key[1]),
                {"propagationPolicy": "Background", "preconditions": {"uid": body["metadata"].get("uid")}},
            )
        self.state.forget(key)
        return True

    async def record_dead_letter(self, body: Mapping[str, Any]) -> str | None:
        """Copy a failed Execution into its DeadLetter when its class's policy wants one."""
        if self.dead_letters is None:
            return None
        class_name = class_name_of(body)
        policy = self._dead_letter_policy(class_name)
        if safejson.quarantined(body):
            return None  # a clipped copy would lose the input; the Execution itself keeps it whole
        return await self.dead_letters.record(body, policy, class_label=self.state.class_label(class_name))

    def _dead_letter_policy(self, class_name: str) -> DeadLetterPolicy:
        """The class's deadLetter policy (ALL when the class is unknown or unreadable)."""
        policy = DeadLetterPolicy.ALL
        cls_body = self.state.gates.cached_class(class_name)
        if cls_body is not None:
            with contextlib.suppress(pydantic.ValidationError):
                policy = ExecutionClassSpec.model_validate(cls_body.get("spec") or {}).dead_letter
        return policy


def _unconfirmed_success(verdict: Verdict, exc: ApiError, pod: str, attempt: int) -> Verdict:
    """A success whose log stayed unreadable: its output is unknown, so it is not recorded as one."""
    error = ErrorInfo.of(
        ErrorType.INTERNAL_ERROR,
        f"The code finished with exit code 0 but its pod's log could not be read (HTTP {exc.status}), so its "
        "output is unknown",
        exc.message, podName=pod, attempt=attempt, httpStatus=exc.status,
    )
    return dataclasses.replace(verdict, success=False, error=error, output=None)
