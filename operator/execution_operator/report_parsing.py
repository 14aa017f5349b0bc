"""The runner's report as the operator reads it: found in the log, checked, and trusted or not.

The supervisor (`runner/report.py`, which runs in the sandbox) prints its report as
`SANDBOX-REPORT <nonce> <i>/<N> <chunk>` log lines and writes a summary with the same nonce to the
termination message. `parse_runner_report` joins the pieces and trusts the result only when the
termination message, the log's last report line and the container's exit code agree (its docstring
says why the sandboxed code cannot forge that). Pure functions over strings: the pod around them is
`classify`'s concern.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from execution_operator.bounds import STREAM_TAIL_BYTES
from execution_operator.runner import report as runner_report

_MARKER_PREFIX = runner_report.MARKER + " "
_SUMMARY_KEYS = ("nonce", "success", "exitCode", "errorType", "userCodeStarted")


@dataclass(frozen=True)
class RunnerReport:
    """The runner's report after verification; `full` when the log line (streams, output) was read."""

    nonce: str
    success: bool
    exit_code: int | None
    error_type: str | None
    exception_type: str | None
    message: str
    user_code_started: bool
    started_at: str | None
    finished_at: str | None
    duration_seconds: float | None
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    output: Any = None
    details: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    full: bool = False
    #: `terminationMessage` when verified through the termination message, `logMarker` when only the log had it.
    source: Literal["terminationMessage", "logMarker"] = "terminationMessage"


def is_json_int(value: Any) -> bool:
    """A JSON integer (Python's bool is an int, JSON's true is not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _valid_report_dict(data: Any) -> bool:
    """The shape every report (summary or full) must have, with a self-consistent outcome."""
    if not isinstance(data, dict) or data.get("v") != runner_report.REPORT_VERSION:
        return False
    if any(key not in data for key in _SUMMARY_KEYS):
        return False
    nonce, success, exit_code, error_type = data["nonce"], data["success"], data["exitCode"], data["errorType"]
    if not isinstance(nonce, str) or not nonce or " " in nonce or not isinstance(success, bool):
        return False
    if exit_code is not None and not is_json_int(exit_code):
        return False
    if not isinstance(data["userCodeStarted"], bool):
        return False
    if success:
        return error_type is None and exit_code == 0 and data["userCodeStarted"]
    return isinstance(error_type, str) and error_type in runner_report.RUNNER_TYPES


def _parse_json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _marker_parts(line: str) -> tuple[str, int, int, str] | None:
    """(nonce, piece number, pieces, text) of a report line; a one-piece line may omit `i/n`."""
    if not line.startswith(_MARKER_PREFIX):
        return None
    nonce, _, rest = line[len(_MARKER_PREFIX) :].partition(" ")
    if rest.startswith("{"):
        return nonce, 1, 1, rest
    numbering, _, body = rest.partition(" ")
    index, _, total = numbering.partition("/")
    if not (index.isdigit() and total.isdigit()) or not 1 <= int(index) <= int(total):
        return None
    return nonce, int(index), int(total), body


def _last_marker(log_tail: str | None) -> tuple[str, str | None, bool] | None:
    """Find the last report line of the log.

    Returns (nonce, the joined JSON text or None when pieces are missing, whether a report line of that
    nonce is the last non-empty line of the log).
    """
    if not log_tail:
        return None
    lines = [line.rstrip("\r") for line in log_tail.split("\n")]
    last_nonempty = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    found: tuple[str, int] | None = None
    for index in range(len(lines) - 1, -1, -1):
        parts = _marker_parts(lines[index])
        if parts is not None:
            found = (parts[0], index)
            break
    if found is None:
        return None
    nonce, last_index = found
    pieces: dict[int, str] = {}
    total = 0
    for line in lines:
        parts = _marker_parts(line)
        if parts is None or parts[0] != nonce:
            continue
        if total and parts[2] != total:
            return nonce, None, last_index == last_nonempty
        total = parts[2]
        pieces.setdefault(parts[1], parts[3])
    body = "".join(pieces[i] for i in range(1, total + 1)) if total and len(pieces) == total else None
    return nonce, body, last_index == last_nonempty


def _report_from(data: dict[str, Any], *, full: bool, source: Literal["terminationMessage", "logMarker"]
                 ) -> RunnerReport:
    def text(key: str) -> str | None:
        value = data.get(key)
        return value if isinstance(value, str) else None

    duration = data.get("durationSeconds")
    meta = data.get("meta") if full and isinstance(data.get("meta"), dict) else {}
    return RunnerReport(
        nonce=data["nonce"],
        success=data["success"],
        exit_code=data["exitCode"],
        error_type=data["errorType"],
        exception_type=(text("exceptionType") or "")[: runner_report.EXCEPTION_TYPE_LIMIT] or None,
        message=runner_report.one_line(text("message") or ""),
        user_code_started=data["userCodeStarted"],
        started_at=text("startedAt"),
        finished_at=text("finishedAt"),
        duration_seconds=float(duration) if isinstance(duration, (int, float)) else None,
        stdout=(text("stdout") or "") if full else "",
        stderr=(text("stderr") or "") if full else "",
        stdout_truncated=full and data.get("stdoutTruncated") is True,
        stderr_truncated=full and data.get("stderrTruncated") is True,
        output=data.get("output") if full else None,
        details=text("details") if full else None,
        meta=meta or {},
        full=full,
        source=source,
    )


def parse_runner_report(
    termination_message: str | None, log_tail: str | None, container_exit_code: int | None
) -> RunnerReport | None:
    """Verify the runner's report; None when it is absent or cannot be trusted.

    Trust rests on three facts about the supervisor: it exits 0/1 only after it printed its report
    line last (every other process already dead) and wrote the termination message; its nonce is
    made after the user's process exists; any failure of its own exits with another code. So:
    - the container exit code must be 0 (success) or 1 (failure), matching the report;
    - with a termination message: its nonce must equal the last report line's nonce when the log
      has one (a user's fake line is never last); without any report line in the tail (log lost or
      cut) the termination message alone is trusted, without streams and output;
    - without a usable termination message (lost, empty): the report line is trusted only when it
      is the very last line of the log, which no process but the supervisor can write.
    """
    if container_exit_code not in (0, 1):
        return None
    expected_success = container_exit_code == 0
    summary = _parse_json(termination_message)
    marker = _last_marker(log_tail)
    if _valid_report_dict(summary):
        if summary["success"] is not expected_success:
            return None
        if marker is None:
            return _report_from(summary, full=False, source="terminationMessage")
        nonce, body, _ = marker
        if nonce == summary["nonce"]:
            full = _parse_json(body)  # None when pieces are missing: the summary alone, without streams
            if not _valid_report_dict(full) or any(full[key] != summary[key] for key in _SUMMARY_KEYS):
                return _report_from(summary, full=False, source="terminationMessage")
            return _report_from(full, full=True, source="terminationMessage")
    # No termination message the supervisor wrote (lost, empty, or the code's forgery left in place
    # when the code made the file unwritable): only the log's very last line can carry the report.
    if marker is None or not marker[2]:
        return None
    nonce, body, _ = marker
    full = _parse_json(body)
    if not _valid_report_dict(full) or full["nonce"] != nonce or full["success"] is not expected_success:
        return None
    return _report_from(full, full=True, source="logMarker")


def report_lines(termination_message: str | None) -> int | None:
    """How many log lines the runner's full report takes, as its termination message says (if it does)."""
    summary = _parse_json(termination_message)
    count = summary.get("reportLines") if isinstance(summary, dict) else None
    return count if isinstance(count, int) and 0 < count < 100_000 else None


def log_holds_full_report(log_tail: str | None) -> bool:
    """Whether the log tail holds every piece of its last report (else read further back)."""
    marker = _last_marker(log_tail)
    return marker is not None and marker[1] is not None


def log_streams(log_tail: str | None) -> dict[str, Any]:
    """The code's output from the log when the runner left no report: Verdict stream fields.

    The log is all that is left when the sandbox was killed before it could report (an OOM kill, a
    signal, the pod's deadline). The log API merges the two streams, so `stdout` holds them as the log
    interleaves them (report lines left out, the tail kept) and `stderr` stays empty.
    """
    if not log_tail:
        return {}
    text = "\n".join(line for line in log_tail.split("\n") if not line.startswith(_MARKER_PREFIX))
    return {"stdout": text[-STREAM_TAIL_BYTES:], "stdout_truncated": len(text) > STREAM_TAIL_BYTES}
