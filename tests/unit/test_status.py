"""Status builders: every transition yields a status the model (and so the CRD) accepts."""

from __future__ import annotations

from typing import Any

from execution_operator import status as st
from execution_operator.classify import Verdict
from execution_operator.errors import ErrorInfo, ErrorType
from execution_operator.models import ExecutionStatus

NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T00:00:05Z"


def merged(status: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(status)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    ExecutionStatus.model_validate(out)
    return out


def cond(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == ctype)


def test_launch_run_succeed() -> None:
    s: dict[str, Any] = {}
    s = merged(s, st.launched(s, attempt=1, pod="p-a1", now=NOW, generation=1, correlation_id="c"))
    assert s["phase"] == "Pending"
    assert s["podName"] == "p-a1"
    assert s["attempt"] == 1
    assert cond(s, "Launched")["status"] == "True"
    assert cond(s, "Succeeded")["status"] == "Unknown"
    s = merged(s, st.running(s, attempt=1, started_at=NOW, now=NOW, generation=1, correlation_id="c"))
    assert s["phase"] == "Running"
    verdict = Verdict(success=True, error=None, exit_code=0, exit_code_source="container", output={"a": 1},
                      stdout="hi\n", duration_seconds=0.5)
    s = merged(s, st.finished(s, verdict=verdict, attempt=1, now=LATER, generation=1, correlation_id="c"))
    assert s["phase"] == "Succeeded"
    assert s["success"] is True
    assert s["output"] == {"a": 1}
    assert s["exitCode"] == 0
    assert s["exitCodeSource"] == "container"
    assert cond(s, "Succeeded") == {"type": "Succeeded", "status": "True", "reason": "Succeeded",
                                    "message": "Attempt 1 succeeded", "lastTransitionTime": LATER,
                                    "observedGeneration": 1}
    assert s["attempts"] == [{"attempt": 1, "podName": "p-a1", "startTime": NOW, "completionTime": LATER,
                              "exitCode": 0, "launch": "cold"}]
    assert s["launch"] == "cold"
    assert "error" not in s


def test_warm_start_is_launched_and_running_in_one_write() -> None:
    s: dict[str, Any] = {}
    s = merged(s, st.warm_started(s, attempt=1, pod="pool-x", now=NOW, generation=1, correlation_id="c"))
    assert s["phase"] == "Running"
    assert s["podName"] == "pool-x"
    assert s["launch"] == "warm"
    assert cond(s, "Launched")["reason"] == "WarmPodClaimed"
    assert cond(s, "Succeeded")["reason"] == "Running"
    assert s["attempts"] == [{"attempt": 1, "podName": "pool-x", "startTime": NOW, "launch": "warm"}]


def test_condition_transition_time_only_moves_on_status_change() -> None:
    first = st.condition(None, "Launched", "True", "PodCreated", "a", NOW, 1)
    same = st.condition(first, "Launched", "True", "PodCreated", "b", LATER, 1)
    flipped = st.condition(first, "Launched", "False", "Retrying", "c", LATER, 1)
    assert same[0]["lastTransitionTime"] == NOW
    assert flipped[0]["lastTransitionTime"] == LATER


def test_failure_reason_is_camel_case_of_error_type() -> None:
    verdict = Verdict(success=False, error=ErrorInfo.of(ErrorType.DIVISION_ERROR, "ZeroDivisionError: x"),
                      exit_code=1, exit_code_source="container")
    s = merged({}, st.finished({}, verdict=verdict, attempt=1, now=NOW, generation=1, correlation_id="c"))
    assert s["phase"] == "Failed"
    assert s["success"] is False
    assert cond(s, "Succeeded")["status"] == "False"
    assert cond(s, "Succeeded")["reason"] == "DivisionError"
    assert s["error"]["type"] == "division_error"
    assert s["error"]["retryable"] is False


def test_retrying_then_cancelled() -> None:
    s: dict[str, Any] = {}
    s = merged(s, st.launched(s, attempt=1, pod="p-a1", now=NOW, generation=1, correlation_id="c"))
    verdict = Verdict(success=False, error=ErrorInfo.of(ErrorType.POD_DELETED, "gone"), exit_code=None,
                      exit_code_source="unknown")
    s = merged(s, st.retrying(s, verdict=verdict, attempt=1, next_attempt_at=LATER, now=NOW, generation=1,
                              correlation_id="c", disruptions=1))
    assert s["phase"] == "Retrying"
    assert s["nextAttemptAt"] == LATER
    assert s["disruptions"] == 1
    assert cond(s, "Launched")["status"] == "False"
    assert cond(s, "Launched")["reason"] == "Retrying"
    assert cond(s, "Succeeded")["status"] == "Unknown"
    assert s["attempts"][0]["errorType"] == "pod_deleted"
    cancel = Verdict(success=False, error=ErrorInfo.of(ErrorType.CANCELLED, "Cancelled by spec.cancel"),
                     exit_code=None, exit_code_source="unknown")
    s = merged(s, st.finished(s, verdict=cancel, attempt=1, now=LATER, generation=2, correlation_id="c"))
    assert s["phase"] == "Cancelled"
    assert "nextAttemptAt" not in s
    assert cond(s, "Succeeded")["reason"] == "Cancelled"


def test_circuit_open_shows_in_launched_condition() -> None:
    verdict = Verdict(success=False, error=ErrorInfo.of(ErrorType.SERVICE_UNAVAILABLE, "open"), exit_code=None,
                      exit_code_source="unknown")
    s = merged({}, st.retrying({}, verdict=verdict, attempt=1, next_attempt_at=LATER, now=NOW, generation=1,
                               correlation_id="c", disruptions=0))
    assert cond(s, "Launched")["reason"] == "CircuitOpen"


def test_invalid() -> None:
    error = ErrorInfo.of(ErrorType.VALIDATION_ERROR, 'ExecutionClass "x" does not exist')
    s = merged({}, st.invalid({}, error=error, now=NOW, generation=1, correlation_id="c"))
    assert s["phase"] == "Failed"
    assert cond(s, "Launched")["reason"] == "Invalid"
    assert cond(s, "Succeeded")["reason"] == "ValidationError"


def test_attempt_history_is_bounded() -> None:
    s: dict[str, Any] = {}
    for n in range(1, 30):
        s = merged(s, st.launched(s, attempt=n, pod=f"p-a{n}", now=NOW, generation=1, correlation_id="c"))
    assert len(s["attempts"]) == st.MAX_ATTEMPT_RECORDS
    assert s["attempts"][-1]["attempt"] == 29


def test_every_patch_is_shaped_by_the_status_model() -> None:
    from execution_operator.bounds import STREAM_TAIL_BYTES

    verdict = Verdict(success=True, error=None, exit_code=0, exit_code_source="container", output={"a": 1},
                      stdout="x" * (STREAM_TAIL_BYTES + 100) + "END", stderr="")
    patch = st.finished({}, verdict=verdict, attempt=1, now=NOW, generation=1, correlation_id="c")
    assert patch["stdout"].endswith("END")
    assert len(patch["stdout"]) <= STREAM_TAIL_BYTES  # the model keeps the tail
    assert patch["stdoutTruncated"] is True
    assert patch["nextAttemptAt"] is None  # cleared fields stay cleared


def test_a_field_the_model_does_not_know_is_sent_as_built() -> None:
    assert st.through_model({}, {"phase": "Running", "somethingNew": 3}) == {"phase": "Running", "somethingNew": 3}


def test_a_patch_the_model_refuses_is_still_sent_as_built() -> None:
    patch = {"attempt": -1}
    assert st.through_model({}, patch) == patch
