"""Why did the sandbox pod end? Pure functions from the pod JSON (and its log tail) to an error envelope.

Everything here works on plain dicts as the API server returns them, so the same code serves the
operator, the tests (realistic fixtures) and any tool that only has `kubectl get pod -o json`.
The runner's own report is trusted only after `report_parsing.parse_runner_report` verified it;
otherwise the verdict comes from what the kubelet recorded. docs/errors.md documents the resulting
contract.
"""

from __future__ import annotations

import signal as _signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from execution_operator.errors import ErrorInfo, ErrorType
from execution_operator.report_parsing import RunnerReport, is_json_int, log_streams, parse_runner_report, report_lines
from execution_operator.runner import report as runner_report

ExitCodeSource = Literal["container", "lastState", "logMarker", "unknown"]

#: Container names the sandbox container may have; otherwise the first container is used.
SANDBOX_CONTAINER_NAMES = ("sandbox", "runner")

# Waiting reasons that mean the container can never start as configured.
_IMMEDIATE_WAITING: dict[str, tuple[ErrorType, str]] = {
    "InvalidImageName": (ErrorType.INVALID_IMAGE, "The image name {image} is not valid"),
    "ErrImageNeverPull": (ErrorType.INVALID_IMAGE, "The image {image} is not on the node and may not be pulled"),
    "SignatureValidationFailed": (ErrorType.INVALID_IMAGE, "The signature of image {image} is not valid"),
    "CreateContainerConfigError": (ErrorType.CONFIG_ERROR, "The sandbox container's configuration is invalid"),
    "RunContainerError": (ErrorType.CONFIG_ERROR, "The sandbox container could not be started"),
    "PreCreateHookError": (ErrorType.CONFIG_ERROR, "A lifecycle hook of the sandbox container failed"),
    "PreStartHookError": (ErrorType.CONFIG_ERROR, "A lifecycle hook of the sandbox container failed"),
    "PostStartHookError": (ErrorType.CONFIG_ERROR, "A lifecycle hook of the sandbox container failed"),
}
_PULL_WAITING = frozenset({"ErrImagePull", "ImagePullBackOff", "RegistryUnavailable", "ImageInspectError"})
#: Terminated reasons of a container that never ran its command.
_START_FAILED = frozenset({"StartError", "ContainerCannotRun", "RunContainerError"})
#: Pod reasons from kubelet admission: the pod never ran on that node.
_ADMISSION_CONFIG = frozenset({"SysctlForbidden", "PodOSNotSupported", "InvalidNodeInfo"})
_ADMISSION_TRANSIENT_PREFIXES = ("OutOf", "UnexpectedAdmissionError", "NodeAffinity", "TopologyAffinityError")
_NODE_LOST_DISRUPTIONS = frozenset({"DeletionByTaintManager", "DeletionByPodGC"})
_STORAGE_EVICTION_HINTS = ("ephemeral local storage", "ephemeral storage", "EmptyDir volume")


# -- verdicts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """How an attempt ended: what the Execution's status records."""

    success: bool
    error: ErrorInfo | None
    exit_code: int | None
    exit_code_source: ExitCodeSource
    output: Any = None
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    user_code_started_at: str | None = None
    finished_at: str | None = None
    duration_seconds: float | None = None


def _dig(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def sandbox_status(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """The sandbox container's status (by name, else the first container)."""
    found = _dig(pod, "status", "containerStatuses") or []
    statuses: list[dict[str, Any]] = [s for s in found if isinstance(s, dict)]
    for name in SANDBOX_CONTAINER_NAMES:
        for status in statuses:
            if status.get("name") == name:
                return status
    return statuses[0] if statuses else None


def report_lines_expected(pod: Mapping[str, Any]) -> int | None:
    """How many log lines the runner's full report takes, from its termination message (if any)."""
    return report_lines(_dig(sandbox_status(pod), "state", "terminated", "message"))


def _image_of(pod: Mapping[str, Any], status: Mapping[str, Any] | None) -> str:
    containers = _dig(pod, "spec", "containers") or []
    if status is not None:
        for container in containers:
            if isinstance(container, dict) and container.get("name") == status.get("name"):
                return str(container.get("image", ""))
        if status.get("image"):
            return str(status["image"])
    if containers and isinstance(containers[0], dict):
        return str(containers[0].get("image", ""))
    return ""


def _condition(pod: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in _dig(pod, "status", "conditions") or []:
        if isinstance(condition, dict) and condition.get("type") == kind:
            return condition
    return None


def pod_finished(pod: Mapping[str, Any]) -> bool:
    """Phase Succeeded/Failed, or the sandbox container has terminated."""
    if _dig(pod, "status", "phase") in ("Succeeded", "Failed"):
        return True
    status = sandbox_status(pod)
    return bool(status and _dig(status, "state", "terminated"))


def _signal_name(exit_code: int) -> str | None:
    if 128 < exit_code < 128 + 65:
        try:
            return _signal.Signals(exit_code - 128).name
        except ValueError:
            return f"SIG{exit_code - 128}"
    return None


def _disruption(pod: Mapping[str, Any]) -> ErrorInfo | None:
    """Pod-level context that explains an end better than the container's exit code."""
    reason = _dig(pod, "status", "reason") or ""
    message = _dig(pod, "status", "message") or ""
    target = _condition(pod, "DisruptionTarget")
    target_reason = target.get("reason", "") if target and target.get("status") == "True" else ""
    phase = _dig(pod, "status", "phase")
    details = message or (target.get("message") if target else None) or None
    if reason == "NodeLost" or target_reason in _NODE_LOST_DISRUPTIONS or phase == "Unknown":
        why = target_reason or reason or "phase Unknown"
        return ErrorInfo.of(ErrorType.NODE_LOST, f"The node running the sandbox was lost ({why})", details,
                            reason=reason or target_reason or None)
    if reason == "Evicted" and any(hint in message for hint in _STORAGE_EVICTION_HINTS):
        return ErrorInfo.of(
            ErrorType.OS_ERROR,
            "The code wrote more to the sandbox's disk (/tmp, /output) than its limit allows",
            details, reason=reason,
        )
    if reason == "Evicted" or target_reason in ("EvictionByEvictionAPI", "TerminationByKubelet"):
        return ErrorInfo.of(ErrorType.EVICTED, f"The sandbox pod was evicted ({target_reason or reason})",
                            details, reason=reason or target_reason)
    if reason == "Preempting" or target_reason in ("PreemptionByScheduler", "PreemptionByKubeScheduler"):
        return ErrorInfo.of(ErrorType.EVICTED, "The sandbox pod was preempted for a higher-priority pod", details,
                            reason=reason or target_reason)
    if reason in ("Terminated", "NodeShutdown"):
        return ErrorInfo.of(ErrorType.EVICTED, "The sandbox pod was stopped because its node shut down", details,
                            reason=reason)
    if reason in _ADMISSION_CONFIG:
        return ErrorInfo.of(ErrorType.CONFIG_ERROR, f"The node refused the sandbox pod ({reason})", details,
                            reason=reason)
    if reason.startswith(_ADMISSION_TRANSIENT_PREFIXES):
        return ErrorInfo.of(ErrorType.EVICTED, f"The node refused the sandbox pod at admission ({reason})",
                            details, reason=reason)
    if reason == "DeadlineExceeded":
        return ErrorInfo.of(ErrorType.TIMEOUT, "The sandbox pod ran past its deadline and was stopped",
                            details or "Pod was active on the node longer than the specified deadline",
                            reason=reason)
    return None


def _exit_chain(status: Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, ExitCodeSource]:
    """The terminated state to read: state.terminated, else lastState.terminated."""
    if status is None:
        return None, "unknown"
    current = _dig(status, "state", "terminated")
    if isinstance(current, dict):
        return current, "container"
    previous = _dig(status, "lastState", "terminated")
    if isinstance(previous, dict):
        return previous, "lastState"
    return None, "unknown"


def _from_report(report: RunnerReport, terminated: Mapping[str, Any], source: ExitCodeSource,
                 base_meta: dict[str, Any]) -> Verdict:
    exit_code = report.exit_code if report.exit_code is not None else terminated.get("exitCode")
    exit_source: ExitCodeSource = "logMarker" if report.source == "logMarker" else source
    common: dict[str, Any] = {
        "exit_code": exit_code,
        "exit_code_source": exit_source,
        "stdout": report.stdout,
        "stderr": report.stderr,
        "stdout_truncated": report.stdout_truncated,
        "stderr_truncated": report.stderr_truncated,
        "user_code_started_at": report.started_at if report.user_code_started else None,
        "finished_at": report.finished_at or terminated.get("finishedAt"),
        "duration_seconds": report.duration_seconds if report.user_code_started else None,
    }
    if report.success:
        return Verdict(success=True, error=None, output=report.output, **common)
    try:
        error_type = ErrorType(report.error_type or "")
    except ValueError:
        error_type = ErrorType.INTERNAL_ERROR
    message = report.message or str(error_type)
    if error_type == ErrorType.KILLED and terminated.get("reason") == "OOMKilled":
        # The runtime saw the cgroup's OOM killer act where the runner could not read memory.events.
        error_type = ErrorType.OOM
        message = "The code was killed for going over its memory limit (out of memory)"
    extra = {k: v for k, v in report.meta.items() if k not in base_meta and isinstance(k, str)}
    meta = {**extra, **base_meta, "exitCode": exit_code, "exceptionType": report.exception_type}
    if exit_code is not None and exit_code > 128 and "signal" not in meta:
        meta["signal"] = _signal_name(exit_code)
    error = ErrorInfo.of(error_type, message, report.details, **meta)
    return Verdict(success=False, error=error, **common)


def _from_exit_code(terminated: Mapping[str, Any], cancel_requested: bool, meta: dict[str, Any]) -> ErrorInfo:
    """No trusted report: classify from what the kubelet recorded about the container."""
    raw_code = terminated.get("exitCode")
    code: int | None = raw_code if is_json_int(raw_code) else None
    reason = terminated.get("reason") or ""
    kubelet_message = terminated.get("message") or None
    if isinstance(kubelet_message, str) and kubelet_message.lstrip().startswith("{"):
        kubelet_message = None  # an unverified report: never shown as if it were the kubelet's words
    details = kubelet_message
    meta = {**meta, "exitCode": code, "reason": reason or None}
    signal_name = _signal_name(code) if code is not None else None
    meta["signal"] = signal_name
    if reason in _START_FAILED:
        return ErrorInfo.of(ErrorType.CONFIG_ERROR, f"The sandbox container could not start ({reason})",
                            details, **meta)
    if reason == "ContainerStatusUnknown":
        return ErrorInfo.of(ErrorType.NODE_LOST, "The node lost track of the sandbox container", details, **meta)
    if reason == "Unknown":
        return ErrorInfo.of(ErrorType.NODE_LOST, "The container runtime lost the sandbox container", details,
                            **meta)
    if cancel_requested and code in (137, 143):
        return ErrorInfo.of(ErrorType.CANCELLED, "The execution was cancelled", details, **meta)
    if reason == "OOMKilled" and code != 143:
        return ErrorInfo.of(ErrorType.OOM, "The sandbox was killed for going over its memory limit (OOMKilled)",
                            details, **meta)
    if code is None:
        return ErrorInfo.of(ErrorType.INTERNAL_ERROR, "The sandbox container ended without an exit code",
                            details, **meta)
    if code == 0:
        return ErrorInfo.of(ErrorType.INTERNAL_ERROR,
                            "The sandbox exited 0 but left no valid runner report, so success cannot be confirmed",
                            details, **meta)
    if code in (126, 127):
        what = "is not executable" if code == 126 else "was not found"
        return ErrorInfo.of(ErrorType.CONFIG_ERROR, f"The sandbox command {what} (exit code {code})", details,
                            **meta)
    if code == 128:
        return ErrorInfo.of(ErrorType.INTERNAL_ERROR,
                            "The container runtime failed to run the sandbox (exit code 128)", details, **meta)
    if code == 143:
        extra = " (its OOMKilled flag is not trusted with SIGTERM)" if reason == "OOMKilled" else ""
        return ErrorInfo.of(ErrorType.KILLED, f"The sandbox was stopped by SIGTERM (exit code 143){extra}",
                            details, **meta)
    if code == 137:
        return ErrorInfo.of(ErrorType.KILLED,
                            "The sandbox was killed by SIGKILL (exit code 137) with no sign of running out of memory",
                            details, **meta)
    if signal_name is not None and code is not None:
        known = runner_report.SIGNAL_ERROR_TYPES.get(code - 128)
        error_type = ErrorType(known[1]) if known else ErrorType.RUNTIME_ERROR
        what = f": {known[2]}" if known else ""
        return ErrorInfo.of(error_type, f"The sandbox was killed by signal {signal_name} (exit code {code}){what}",
                            details, **meta)
    if code == runner_report.SUPERVISOR_FAILURE_AFTER_START_EXIT:
        return ErrorInfo.of(ErrorType.INTERNAL_ERROR,
                            f"The sandbox runner failed while the code ran (exit code {code}); the code may have "
                            "interfered with it", details, **meta)
    return ErrorInfo.of(ErrorType.INTERNAL_ERROR,
                        f"The sandbox runner failed before reporting a result (exit code {code})", details, **meta)


def classify_finished_pod(
    pod: Mapping[str, Any], log_tail: str | None, *, cancel_requested: bool = False, attempt: int | None = None
) -> Verdict:
    """The verdict for a pod whose sandbox container (or the pod itself) has ended.

    Order: a verified runner report (the user's code finished) wins, unless the container never
    really started; then pod-level context (eviction, node lost, deadline); then a cancel request;
    then the container's own termination (OOMKilled, exit code, signal).
    """
    status = sandbox_status(pod)
    terminated, source = _exit_chain(status)
    meta: dict[str, Any] = {"podName": _dig(pod, "metadata", "name"), "attempt": attempt}
    report = None
    if terminated is not None and (terminated.get("reason") or "") not in _START_FAILED:
        report = parse_runner_report(terminated.get("message"), log_tail, terminated.get("exitCode"))
    if report is not None and terminated is not None:
        return _from_report(report, terminated, source, meta)
    exit_code = terminated.get("exitCode") if terminated is not None else None
    if not is_json_int(exit_code):
        exit_code, source = None, "unknown"
    finished_at = terminated.get("finishedAt") if terminated is not None else None
    verdict: dict[str, Any] = {
        "exit_code": exit_code, "exit_code_source": source, "finished_at": finished_at, **log_streams(log_tail),
    }
    context = _disruption(pod)
    if context is not None and not (context.type == ErrorType.TIMEOUT and cancel_requested):
        context_meta = {**context.meta, **meta, "exitCode": exit_code}
        error = ErrorInfo.of(context.type, context.message, context.details, **context_meta)
        return Verdict(success=False, error=error, **verdict)
    if cancel_requested:
        error = ErrorInfo.of(ErrorType.CANCELLED, "The execution was cancelled", None, **meta, exitCode=exit_code)
        return Verdict(success=False, error=error, **verdict)
    if _dig(pod, "metadata", "deletionTimestamp") and (terminated is None or exit_code in (137, 143)):
        # Stopped because someone deleted the pod (the operator records its own verdict before deleting).
        error = ErrorInfo.of(ErrorType.POD_DELETED, "The sandbox pod was deleted before it finished", None,
                             **meta, exitCode=exit_code)
        return Verdict(success=False, error=error, **verdict)
    if terminated is None:
        waiting = _dig(status, "state", "waiting") if status else None
        reason = waiting.get("reason") if isinstance(waiting, dict) else None
        error = ErrorInfo.of(ErrorType.INTERNAL_ERROR, "The sandbox pod ended before its container ran",
                             _dig(pod, "status", "message") or (waiting or {}).get("message"),
                             **meta, reason=reason or _dig(pod, "status", "reason"))
        return Verdict(success=False, error=error, **verdict)
    if exit_code == runner_report.SUPERVISOR_FAILURE_AFTER_START_EXIT:
        # The user's code was running when the runner failed: maybe its doing, so never the platform's.
        verdict["user_code_started_at"] = terminated.get("startedAt") or finished_at
    return Verdict(success=False, error=_from_exit_code(terminated, False, meta), **verdict)


# -- pods that have not finished ----------------------------------------------------------------


def _pull_problem(message: str) -> str:
    lowered = message.lower()
    if "not found" in lowered or "manifest unknown" in lowered:
        return "not found"
    if "unauthorized" in lowered or "denied" in lowered or "403" in lowered:
        return "access denied"
    if "too many requests" in lowered or "429" in lowered:
        return "the registry is rate-limiting"
    if "timeout" in lowered or "deadline exceeded" in lowered:
        return "the registry did not answer in time"
    if "connection refused" in lowered or "no such host" in lowered:
        return "the registry is unreachable"
    if "back-off" in lowered:
        return "still backing off after failed pulls"
    return "pull failed"


def _seconds(value: float) -> str:
    return f"{value:.0f}s"


def classify_stuck_pod(pod: Mapping[str, Any], *, pending_seconds: float, pending_timeout: float) -> ErrorInfo | None:
    """For a pod whose sandbox has not started: an error once it clearly never will, else None.

    Configuration mistakes fail at once; pulls and scheduling get until the pending timeout.
    """
    if pod_finished(pod):
        return None
    meta: dict[str, Any] = {"podName": _dig(pod, "metadata", "name"), "pendingSeconds": round(pending_seconds, 1)}
    expired = pending_seconds >= pending_timeout
    listed = (_dig(pod, "status", "initContainerStatuses") or []) + (_dig(pod, "status", "containerStatuses") or [])
    statuses = [s for s in listed if isinstance(s, dict)]
    for status in statuses:
        if _dig(status, "state", "running"):
            continue
        waiting = _dig(status, "state", "waiting")
        if not isinstance(waiting, dict):
            continue
        reason = waiting.get("reason") or ""
        message = waiting.get("message") or ""
        image = _image_of(pod, status)
        if reason in _IMMEDIATE_WAITING:
            error_type, text = _IMMEDIATE_WAITING[reason]
            return ErrorInfo.of(error_type, text.format(image=f'"{image}"'), message or None, **meta,
                                reason=reason, image=image)
        if not expired:
            continue
        if reason in _PULL_WAITING:
            problem = _pull_problem(message)
            return ErrorInfo.of(
                ErrorType.IMAGE_PULL_ERROR,
                f'Image "{image}" could not be pulled for {_seconds(pending_seconds)}: {problem}',
                message or None, **meta, reason=reason, image=image,
            )
        if reason == "CreateContainerError":
            transient = "deadline exceeded" in message.lower()
            error_type = ErrorType.INTERNAL_ERROR if transient else ErrorType.CONFIG_ERROR
            return ErrorInfo.of(
                error_type,
                f"The sandbox container could not be created within {_seconds(pending_seconds)}",
                message or None, **meta, reason=reason,
            )
    if not expired:
        return None
    scheduled = _condition(pod, "PodScheduled")
    if scheduled is not None and scheduled.get("status") == "False":
        why = scheduled.get("message") or scheduled.get("reason") or "no reason given"
        return ErrorInfo.of(
            ErrorType.UNSCHEDULABLE,
            f"The pod could not be scheduled for {_seconds(pending_seconds)}: {why}",
            scheduled.get("message"), **meta, reason=scheduled.get("reason"),
        )
    if any(_dig(s, "state", "running") for s in statuses):
        return None
    if not _dig(pod, "spec", "nodeName") and scheduled is None:
        return ErrorInfo.of(ErrorType.UNSCHEDULABLE,
                            f"The pod was not scheduled within {_seconds(pending_seconds)}", None, **meta)
    return ErrorInfo.of(ErrorType.INTERNAL_ERROR,
                        f"The sandbox container did not start within {_seconds(pending_seconds)}",
                        _dig(pod, "status", "message"), **meta, reason=_dig(pod, "status", "reason"))


def classify_vanished_pod(last_seen: Mapping[str, Any] | None, *, cancel_requested: bool) -> Verdict:
    """The pod is gone before the operator recorded its end: deleted by someone else, or its node lost."""
    if last_seen is not None and pod_finished(last_seen):
        return classify_finished_pod(last_seen, None, cancel_requested=cancel_requested)
    status = sandbox_status(last_seen) if last_seen is not None else None
    terminated, source = _exit_chain(status)
    exit_code = terminated.get("exitCode") if terminated is not None else None
    if not is_json_int(exit_code):
        exit_code, source = None, "unknown"
    meta = {"podName": _dig(last_seen, "metadata", "name"), "exitCode": exit_code}
    if cancel_requested:
        error = ErrorInfo.of(ErrorType.CANCELLED, "The execution was cancelled", None, **meta)
    else:
        context = _disruption(last_seen) if last_seen is not None else None
        if context is not None and context.type in (ErrorType.NODE_LOST, ErrorType.EVICTED):
            error = ErrorInfo.of(context.type, context.message, context.details, **{**context.meta, **meta})
        else:
            error = ErrorInfo.of(ErrorType.POD_DELETED, "The sandbox pod was deleted before it finished", None,
                                 **meta)
    return Verdict(success=False, error=error, exit_code=exit_code, exit_code_source=source)


def classify_create_error(status: int, body: Mapping[str, Any] | None) -> ErrorInfo:
    """The API server refused to create the pod (or its carrier): HTTP status + the Status object."""
    body = body or {}
    message = str(body.get("message") or "")
    reason = str(body.get("reason") or "") or None
    meta = {"httpStatus": status, "reason": reason}
    details = message or None
    if status == 403 and "exceeded quota" in message:
        return ErrorInfo.of(ErrorType.QUOTA_EXCEEDED, "A ResourceQuota in the namespace refused the sandbox pod",
                            details, **meta)
    if status == 403 and "is being terminated" in message:
        return ErrorInfo.of(ErrorType.CONFIG_ERROR, "The namespace is being deleted", details, **meta)
    if status in (400, 403, 422):
        what = "violates the namespace's Pod Security level" if "PodSecurity" in message else "was rejected"
        said = f": {message}" if message else ""  # the server's own words say what to fix
        return ErrorInfo.of(ErrorType.CONFIG_ERROR, f"The sandbox pod {what} (HTTP {status}){said}", details,
                            **meta)
    if status == 429:
        return ErrorInfo.of(ErrorType.INTERNAL_ERROR, "The API server is throttling requests (HTTP 429)",
                            details, **meta)
    if status >= 500:
        return ErrorInfo.of(ErrorType.INTERNAL_ERROR, f"The API server failed to create the pod (HTTP {status})",
                            details, **meta)
    if status <= 0:
        return ErrorInfo.of(ErrorType.INTERNAL_ERROR, "The API server could not be reached to create the pod",
                            None, **meta)
    return ErrorInfo.of(ErrorType.INTERNAL_ERROR, f"Creating the sandbox pod failed (HTTP {status})", details,
                        **meta)
