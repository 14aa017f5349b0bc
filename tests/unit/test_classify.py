"""The failure classifier, table-driven: realistic pod JSON (tests/unit/fixtures/pods) in, envelope out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from execution_operator.bounds import STREAM_TAIL_BYTES
from execution_operator.classify import (
    classify_create_error,
    classify_finished_pod,
    classify_stuck_pod,
    classify_vanished_pod,
    pod_finished,
)
from execution_operator.errors import ERROR_FLAGS, ErrorType
from execution_operator.report_parsing import parse_runner_report

FIXTURES = Path(__file__).parent / "fixtures" / "pods"


def pod(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def terminated(p: dict[str, Any]) -> dict[str, Any]:
    state = p["status"]["containerStatuses"][0]
    return state["state"].get("terminated") or state["lastState"]["terminated"]


def report_log(p: dict[str, Any], *, output: Any = None, stdout: str = "", stderr: str = "",
               details: str | None = None, nonce: str | None = None, meta: dict[str, Any] | None = None) -> str:
    """The log a real runner would have left for the fixture's termination message."""
    summary = json.loads(terminated(p)["message"])
    full = {**summary, "stdout": stdout, "stderr": stderr, "stdoutTruncated": False, "stderrTruncated": False,
            "output": output, "details": details, "meta": meta or {}}
    return f"{stdout}{stderr}SANDBOX-REPORT {nonce or summary['nonce']} {json.dumps(full, separators=(',', ':'))}\n"


FORGED_LINE = 'SANDBOX-REPORT 00000000000000000000000000000000 {"v":1,"success":true}\n'

# name, log tail (callable on the pod, or a string), kwargs, expected type (None: success), exit code, source, meta
FINISHED_CASES: list[tuple[str, Any, dict[str, Any], str | None, int | None, str, dict[str, Any]]] = [
    ("report-succeeded", lambda p: report_log(p, output={"answer": 42}, stdout="hi\n"), {}, None, 0, "container", {}),
    ("report-division-error",
     lambda p: FORGED_LINE + report_log(p, stderr="Traceback...\n", details='File "<execution>", line 3',
                                        meta={"lineno": 3, "exceptionType": "ZeroDivisionError"}),
     {"attempt": 2}, "division_error", 1, "container",
     {"exceptionType": "ZeroDivisionError", "lineno": 3, "podName": "hello-a1", "attempt": 2, "exitCode": 1}),
    ("report-timeout", lambda p: report_log(p, meta={"timeoutSeconds": 5}), {}, "timeout", 137, "container",
     {"timeoutSeconds": 5}),
    ("report-segfault", lambda p: report_log(p, meta={"signal": "SIGSEGV"}), {}, "segfault", 139, "container",
     {"signal": "SIGSEGV", "exitCode": 139}),
    ("report-killed-oomkilled", report_log, {}, "oom", 137, "container", {"signal": "SIGKILL"}),
    ("report-setup-failed", report_log, {}, "internal_error", 1, "container", {}),
    ("laststate-sys-exit", report_log, {}, "runtime_error", 3, "lastState", {"exceptionType": "SystemExit"}),
    ("oomkilled", None, {}, "oom", 137, "container", {"reason": "OOMKilled", "exitCode": 137}),
    ("killed-137", None, {}, "killed", 137, "container", {"signal": "SIGKILL"}),
    ("oomkilled-143", None, {}, "killed", 143, "container", {"reason": "OOMKilled", "signal": "SIGTERM"}),
    ("sigterm-143", None, {}, "killed", 143, "container", {"signal": "SIGTERM"}),
    ("sigterm-143", None, {"cancel_requested": True}, "cancelled", 143, "container", {}),
    ("killed-137", None, {"cancel_requested": True}, "cancelled", 137, "container", {}),
    ("deadline-exceeded", None, {}, "timeout", 137, "container", {"reason": "DeadlineExceeded"}),
    ("evicted-memory-pressure", None, {}, "evicted", 137, "container", {"reason": "Evicted"}),
    ("evicted-emptydir-limit", None, {}, "os_error", 137, "container", {"reason": "Evicted"}),
    ("preempted", None, {}, "evicted", 143, "container", {"reason": "PreemptionByScheduler"}),
    ("drained", None, {}, "evicted", 143, "container", {"reason": "EvictionByEvictionAPI"}),
    ("node-shutdown", None, {}, "evicted", 143, "container", {"reason": "Terminated"}),
    ("admission-outofcpu", None, {}, "evicted", None, "unknown", {"reason": "OutOfcpu"}),
    ("node-lost-taint", None, {}, "node_lost", 137, "container", {"reason": "DeletionByTaintManager"}),
    ("node-lost-reason", None, {}, "node_lost", 137, "container", {"reason": "NodeLost"}),
    ("node-gone-podgc", None, {}, "node_lost", 137, "container", {"reason": "DeletionByPodGC"}),
    ("container-status-unknown", None, {}, "node_lost", 137, "container", {"reason": "ContainerStatusUnknown"}),
    ("start-error", None, {}, "config_error", 128, "container", {"reason": "StartError"}),
    ("exit-127", None, {}, "config_error", 127, "container", {}),
    ("exit-126", None, {}, "config_error", 126, "container", {}),
    ("exit-0-no-report", "hello\n", {}, "internal_error", 0, "container", {}),
    ("exit-1-runner-crashed",
     "Traceback (most recent call last):\nModuleNotFoundError: No module named 'execution_operator'\n",
     {}, "internal_error", 1, "container", {}),
    ("exit-2-runner-failed", "sandbox runner failed: OSError\n", {}, "internal_error", 2, "container", {}),
    ("exit-139-no-report", None, {}, "segfault", 139, "container", {"signal": "SIGSEGV"}),
    ("report-forged-nonce", FORGED_LINE, {}, "internal_error", 0, "container", {}),
]


@pytest.mark.parametrize(
    ("name", "log", "kwargs", "expected", "exit_code", "source", "meta"),
    FINISHED_CASES,
    ids=[f"{c[0]}{'-cancel' if c[2].get('cancel_requested') else ''}" for c in FINISHED_CASES],
)
def test_finished_pod(name: str, log: Any, kwargs: dict[str, Any], expected: str | None, exit_code: int | None,
                      source: str, meta: dict[str, Any]) -> None:
    p = pod(name)
    assert pod_finished(p)
    tail = log(p) if callable(log) else log
    verdict = classify_finished_pod(p, tail, **kwargs)
    assert (verdict.exit_code, verdict.exit_code_source) == (exit_code, source)
    if expected is None:
        assert verdict.success
        assert verdict.error is None
        return
    assert not verdict.success
    assert verdict.error is not None
    error = verdict.error
    assert error.type == expected
    assert error.retryable is ERROR_FLAGS[ErrorType(expected)].retryable
    assert error.message
    assert "\n" not in error.message
    assert meta.items() <= error.meta.items()
    assert error.meta["podName"] == "hello-a1"


def test_success_carries_output_streams_and_times() -> None:
    p = pod("report-succeeded")
    verdict = classify_finished_pod(p, report_log(p, output={"answer": 42}, stdout="hi\n"))
    assert verdict.output == {"answer": 42}
    assert verdict.stdout == "hi\n"
    assert verdict.stderr == ""
    assert verdict.user_code_started_at == "2026-03-14T09:26:55.301Z"
    assert verdict.duration_seconds == pytest.approx(0.412)


def test_user_exception_details_and_message() -> None:
    p = pod("report-division-error")
    verdict = classify_finished_pod(p, report_log(p, details='Traceback...\n  File "<execution>", line 3'))
    assert verdict.error is not None
    assert verdict.error.message == "ZeroDivisionError: division by zero"
    assert verdict.error.details is not None
    assert "<execution>" in verdict.error.details


@pytest.mark.parametrize(
    ("error_type", "exception"),
    [("syntax_error", "SyntaxError"), ("import_error", "ModuleNotFoundError"), ("type_error", "TypeError"),
     ("value_error", "ValueError"), ("key_error", "KeyError"), ("index_error", "IndexError"),
     ("attribute_error", "AttributeError"), ("name_error", "NameError"), ("file_not_found", "FileNotFoundError"),
     ("recursion_error", "RecursionError"), ("encoding_error", "UnicodeDecodeError"),
     ("json_error", "JSONDecodeError"), ("runtime_error", "RuntimeError"), ("permission", "PermissionError"),
     ("os_error", "OSError"), ("network_error", "ConnectionRefusedError"), ("network_timeout", "TimeoutError"),
     ("oom", "MemoryError"), ("output_too_large", None), ("output_error", None)],
)
def test_every_user_level_type_passes_through(error_type: str, exception: str | None) -> None:
    p = pod("report-division-error")
    summary = json.loads(terminated(p)["message"])
    summary.update(errorType=error_type, exceptionType=exception, message=f"{exception}: boom")
    terminated(p)["message"] = json.dumps(summary)
    verdict = classify_finished_pod(p, report_log(p))
    assert verdict.error is not None
    assert verdict.error.type == error_type
    assert verdict.error.retryable is (error_type in ("network_error", "network_timeout"))


@pytest.mark.parametrize(
    ("exit_code", "error_type", "signal"),
    [(134, "abort", "SIGABRT"), (135, "bus_error", "SIGBUS"), (136, "arithmetic_error", "SIGFPE"),
     (141, "pipe_error", "SIGPIPE"), (137, "killed", "SIGKILL"), (139, "segfault", "SIGSEGV")],
)
def test_signal_reports(exit_code: int, error_type: str, signal: str) -> None:
    p = pod("report-segfault")
    summary = json.loads(terminated(p)["message"])
    summary.update(errorType=error_type, exitCode=exit_code)
    terminated(p)["message"] = json.dumps(summary)
    verdict = classify_finished_pod(p, report_log(p))
    assert verdict.error is not None
    assert (verdict.error.type, verdict.exit_code, verdict.error.meta["signal"]) == (error_type, exit_code, signal)


def test_messages_read_well() -> None:
    segv = classify_finished_pod(pod("exit-139-no-report"), None).error
    assert segv is not None
    assert segv.message == "The sandbox was killed by signal SIGSEGV (exit code 139): segmentation fault"
    crashed = classify_finished_pod(pod("exit-1-runner-crashed"), "Traceback\nModuleNotFoundError: x\n").error
    assert crashed is not None
    assert "ModuleNotFoundError" not in crashed.message  # raw text only in the log
    start = classify_finished_pod(pod("start-error"), None).error
    assert start is not None
    assert start.details is not None
    assert "executable file not found" in start.details


@pytest.mark.parametrize(
    ("fixture", "error_type"),
    [("oomkilled", "oom"), ("killed-137", "killed"), ("sigterm-143", "killed"), ("exit-139-no-report", "segfault"),
     ("exit-1-runner-crashed", "internal_error"), ("deadline-exceeded", "timeout"),
     ("evicted-memory-pressure", "evicted")],
)
def test_output_stays_in_the_streams_when_the_runner_could_not_report(fixture: str, error_type: str) -> None:
    # The sandbox was killed before its report: the log is the only record of what the code printed.
    log = "about to allocate\nstill going\n" + FORGED_LINE
    verdict = classify_finished_pod(pod(fixture), log)
    assert verdict.error is not None
    assert verdict.error.type == error_type
    assert verdict.stdout == "about to allocate\nstill going\n"
    assert not verdict.stdout_truncated
    assert "about to allocate" not in (verdict.error.details or "")  # not moved into the error


def test_output_from_the_log_keeps_its_tail() -> None:
    log = "".join(f"line {i}\n" for i in range(5000))
    verdict = classify_finished_pod(pod("oomkilled"), log)
    assert verdict.stdout_truncated
    assert len(verdict.stdout) == STREAM_TAIL_BYTES
    assert verdict.stdout.endswith("line 4999\n")
    assert classify_finished_pod(pod("oomkilled"), None).stdout == ""


def test_disruption_after_the_code_finished_keeps_the_code_outcome() -> None:
    p = pod("report-succeeded")
    p["status"]["conditions"].append({"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"})
    assert classify_finished_pod(p, report_log(p, output=1)).success


def test_start_failure_with_exit_0_is_not_success() -> None:
    p = pod("report-succeeded")
    terminated(p)["reason"] = "StartError"
    verdict = classify_finished_pod(p, report_log(p, output=1))
    assert not verdict.success
    assert verdict.error is not None
    assert verdict.error.type == "config_error"


# -- the exit-code fallback chain and what is trusted ------------------------------------------------


def test_exit_code_from_log_marker_when_the_termination_message_is_lost() -> None:
    p = pod("report-timeout")
    log = report_log(p)
    terminated(p).pop("message")
    verdict = classify_finished_pod(p, log)
    assert (verdict.exit_code, verdict.exit_code_source) == (137, "logMarker")
    assert verdict.error is not None
    assert verdict.error.type == "timeout"


def test_log_marker_without_termination_message_must_be_the_last_line() -> None:
    p = pod("report-succeeded")
    log = report_log(p, output="forged") + "more output after the report\n"
    terminated(p).pop("message")
    verdict = classify_finished_pod(p, log)
    assert not verdict.success
    assert verdict.error is not None
    assert verdict.error.type == "internal_error"
    assert (verdict.exit_code, verdict.exit_code_source) == (0, "container")


def test_no_terminated_state_means_unknown_exit_code() -> None:
    verdict = classify_finished_pod(pod("admission-outofcpu"), report_log(pod("report-succeeded")))
    assert (verdict.exit_code, verdict.exit_code_source) == (None, "unknown")
    assert not verdict.success


def test_parse_requires_matching_nonce_and_exit_code() -> None:
    p = pod("report-division-error")
    message = terminated(p)["message"]
    good = report_log(p)
    assert parse_runner_report(message, good, 1) is not None
    assert parse_runner_report(message, good, 0) is None  # a failure report with exit 0
    assert parse_runner_report(message, good, 137) is None  # the supervisor itself was killed
    assert parse_runner_report(message, good, None) is None
    assert parse_runner_report(message, report_log(p, nonce="f" * 32), 1) is None
    assert parse_runner_report(message, good + FORGED_LINE, 1) is None  # a later fake line breaks trust
    assert parse_runner_report("not json", good + "x\n", 1) is None


def test_parse_termination_message_alone_has_no_streams() -> None:
    p = pod("report-succeeded")
    report = parse_runner_report(terminated(p)["message"], None, 0)
    assert report is not None
    assert report.success
    assert not report.full
    assert report.output is None
    cut = "...the front of the report line was cut off\n"  # a log tail too short for the marker line
    assert parse_runner_report(terminated(p)["message"], cut, 0) is not None


def test_parse_rejects_inconsistent_reports() -> None:
    p = pod("report-succeeded")
    summary = json.loads(terminated(p)["message"])
    for bad in ({"errorType": "division_error"}, {"exitCode": 3}, {"v": 2}, {"errorType": None, "success": False},
                {"nonce": "has space"}, {"userCodeStarted": False}):
        forged = json.dumps({**summary, **bad})
        assert parse_runner_report(forged, None, 0) is None, bad
    failure = {**summary, "success": False, "errorType": "made_up_type", "exitCode": 1}
    assert parse_runner_report(json.dumps(failure), None, 1) is None


# -- pods that never finished -----------------------------------------------------------------------


STUCK_CASES: list[tuple[str, float, str | None, dict[str, Any]]] = [
    ("invalid-image-name", 2, "invalid_image", {"reason": "InvalidImageName"}),
    ("err-image-never-pull", 2, "invalid_image", {"reason": "ErrImageNeverPull"}),
    ("create-container-config-error", 2, "config_error", {"reason": "CreateContainerConfigError"}),
    ("run-container-error", 2, "config_error", {"reason": "RunContainerError"}),
    ("image-pull-backoff", 30, None, {}),
    ("image-pull-backoff", 120, "image_pull_error", {"reason": "ImagePullBackOff"}),
    ("err-image-pull-timeout", 150, "image_pull_error", {"reason": "ErrImagePull"}),
    ("unschedulable", 30, None, {}),
    ("unschedulable", 121, "unschedulable", {"reason": "Unschedulable"}),
    ("create-container-error-deadline", 30, None, {}),
    ("create-container-error-deadline", 125, "internal_error", {"reason": "CreateContainerError"}),
    ("container-creating", 60, None, {}),
    ("container-creating", 300, "internal_error", {}),
    ("running", 500, None, {}),
]


@pytest.mark.parametrize(("name", "pending", "expected", "meta"), STUCK_CASES,
                         ids=[f"{c[0]}-{c[1]:g}s" for c in STUCK_CASES])
def test_stuck_pod(name: str, pending: float, expected: str | None, meta: dict[str, Any]) -> None:
    p = pod(name)
    assert not pod_finished(p)
    error = classify_stuck_pod(p, pending_seconds=pending, pending_timeout=120)
    if expected is None:
        assert error is None
        return
    assert error is not None
    assert error.type == expected
    assert error.retryable is ERROR_FLAGS[ErrorType(expected)].retryable
    assert meta.items() <= error.meta.items()
    assert error.meta["podName"] == "hello-a1"
    assert "\n" not in error.message


def test_stuck_messages() -> None:
    pull = classify_stuck_pod(pod("image-pull-backoff"), pending_seconds=120, pending_timeout=120)
    assert pull is not None
    assert pull.message == 'Image "ghcr.io/execution-operator/sandbox:nope" could not be pulled for 120s: not found'
    assert pull.details is not None
    assert "NotFound" in pull.details
    timeout = classify_stuck_pod(pod("err-image-pull-timeout"), pending_seconds=150, pending_timeout=120)
    assert timeout is not None
    assert timeout.message.endswith("the registry did not answer in time")
    unsched = classify_stuck_pod(pod("unschedulable"), pending_seconds=121, pending_timeout=120)
    assert unsched is not None
    assert "2 Insufficient memory" in unsched.message
    invalid = classify_stuck_pod(pod("invalid-image-name"), pending_seconds=0, pending_timeout=120)
    assert invalid is not None
    assert "ghcr.io/Execution-Operator/Sandbox:0.1.0" in invalid.message


def test_finished_pod_is_not_stuck() -> None:
    assert classify_stuck_pod(pod("killed-137"), pending_seconds=999, pending_timeout=1) is None


# -- pods that vanished ---------------------------------------------------------------------------------


def test_vanished_pod() -> None:
    deleted = classify_vanished_pod(pod("running"), cancel_requested=False)
    assert deleted.error is not None
    assert deleted.error.type == "pod_deleted"
    assert deleted.error.retryable
    assert (deleted.exit_code, deleted.exit_code_source) == (None, "unknown")
    assert classify_vanished_pod(None, cancel_requested=False).error.type == "pod_deleted"  # type: ignore[union-attr]
    cancelled = classify_vanished_pod(pod("running"), cancel_requested=True)
    assert cancelled.error is not None
    assert cancelled.error.type == "cancelled"
    assert not cancelled.error.retryable
    lost = pod("running")
    lost["status"]["conditions"].append({"type": "DisruptionTarget", "status": "True",
                                         "reason": "DeletionByTaintManager"})
    assert classify_vanished_pod(lost, cancel_requested=False).error.type == "node_lost"  # type: ignore[union-attr]


def test_vanished_after_finishing_uses_its_last_state() -> None:
    """The termination message alone is enough once the pod (and its log) is gone."""
    verdict = classify_vanished_pod(pod("report-division-error"), cancel_requested=False)
    assert verdict.error is not None
    assert verdict.error.type == "division_error"
    assert (verdict.exit_code, verdict.exit_code_source) == (1, "container")


# -- pod creation refused ---------------------------------------------------------------------------------


CREATE_CASES: list[tuple[int, dict[str, Any], str]] = [
    (403, {"kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403,
           "message": 'pods "hello-a1" is forbidden: exceeded quota: team-a-quota, requested: limits.memory=256Mi, '
                      "used: limits.memory=1Gi, limited: limits.memory=1Gi"}, "quota_exceeded"),
    (403, {"kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403,
           "message": 'pods "hello-a1" is forbidden: violates PodSecurity "restricted:latest": '
                      'allowPrivilegeEscalation != false (container "sandbox" must set '
                      "securityContext.allowPrivilegeEscalation=false)"}, "config_error"),
    (422, {"kind": "Status", "status": "Failure", "reason": "Invalid", "code": 422,
           "message": 'Pod "hello-a1" is invalid: spec.containers[0].image: Required value'}, "config_error"),
    (403, {"kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403,
           "message": 'admission webhook "policy.example.com" denied the request: images must be signed'},
     "config_error"),
    (429, {"kind": "Status", "status": "Failure", "reason": "TooManyRequests", "code": 429,
           "message": "Too many requests, please try again later."}, "internal_error"),
    (500, {"kind": "Status", "status": "Failure", "reason": "InternalError", "code": 500,
           "message": 'Internal error occurred: failed calling webhook "policy.example.com": context deadline '
                      "exceeded"}, "internal_error"),
    (504, {"kind": "Status", "status": "Failure", "reason": "Timeout", "code": 504,
           "message": "Timeout: request did not complete within requested timeout"}, "internal_error"),
    (0, {}, "internal_error"),
]


@pytest.mark.parametrize(("status", "body", "expected"), CREATE_CASES)
def test_create_error(status: int, body: dict[str, Any], expected: str) -> None:
    error = classify_create_error(status, body)
    assert error.type == expected
    assert error.retryable is ERROR_FLAGS[ErrorType(expected)].retryable
    assert error.meta["httpStatus"] == status
    if expected == "internal_error":
        assert body.get("message", "") not in error.message or not body  # the API's raw text stays in details


def test_every_contract_type_is_documented() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "errors.md").read_text()
    for error_type in ErrorType:
        assert f"`{error_type.value}`" in docs, error_type


@pytest.mark.parametrize(
    ("reason", "message", "pending", "expected"),
    [
        ("CreateContainerError", 'failed to generate container spec: invalid mount "/sandbox/payload"', 10, None),
        ("CreateContainerError", 'failed to generate container spec: invalid mount "/sandbox/payload"', 130,
         "config_error"),
        ("PostStartHookError", "Exec lifecycle hook ([/bin/false]) for Container \"sandbox\" returned error", 1,
         "config_error"),
        ("RegistryUnavailable", "registry ghcr.io returned 503", 130, "image_pull_error"),
        ("ImageInspectError", "Failed to inspect image", 130, "image_pull_error"),
    ],
)
def test_other_waiting_reasons(reason: str, message: str, pending: float, expected: str | None) -> None:
    p = pod("create-container-config-error")
    p["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": reason, "message": message}}
    error = classify_stuck_pod(p, pending_seconds=pending, pending_timeout=120)
    assert (error.type if error else None) == expected


def test_scheduling_gated_waits_until_the_pending_timeout() -> None:
    p = pod("unschedulable")
    gated = "Scheduling is blocked due to non-empty scheduling gates"
    p["status"]["conditions"][0].update(reason="SchedulingGated", message=gated)
    assert classify_stuck_pod(p, pending_seconds=60, pending_timeout=120) is None
    error = classify_stuck_pod(p, pending_seconds=120, pending_timeout=120)
    assert error is not None
    assert error.type == "unschedulable"
    assert error.meta["reason"] == "SchedulingGated"


@pytest.mark.parametrize(
    ("exit_code", "signal"), [(152, "SIGXCPU"), (153, "SIGXFSZ"), (159, "SIGSYS"), (132, "SIGILL")]
)
def test_other_signals_without_a_report(exit_code: int, signal: str) -> None:
    p = pod("exit-139-no-report")
    terminated(p)["exitCode"] = exit_code
    error = classify_finished_pod(p, None).error
    assert error is not None
    assert (error.type, error.meta["signal"]) == ("runtime_error", signal)
    assert not error.retryable
