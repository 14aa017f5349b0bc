"""The runner's report channel: names, bounds and encoders shared by the supervisor and the classifier.

This module is imported by the runner inside the sandbox, so it must stay dependency-free and cheap to
import (no pydantic, no errors.py): the error-type names below are the string values of
`execution_operator.errors.ErrorType` (a unit test keeps them in step).
"""

from __future__ import annotations

import time

from execution_operator.runner import jsonc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: Prefix of the supervisor's final stdout line: `SANDBOX-REPORT <nonce> <compact JSON full report>`.
MARKER = "SANDBOX-REPORT"
REPORT_VERSION = 1
#: The kubelet truncates a termination message at 4096 bytes; the summary stays below this.
TERMINATION_LIMIT = 4000
MESSAGE_LIMIT = 512
EXCEPTION_TYPE_LIMIT = 100
DETAILS_LIMIT = 8192

#: The environment variable naming the child's report socket fd (removed before the user's code runs).
REPORT_FD_ENV = "SANDBOX_REPORT_FD"

#: The supervisor's exit code when it fails itself: neither 0 nor 1, so its report is never trusted.
SUPERVISOR_FAILURE_EXIT = 2
#: The same after the user's code was started: the code may have caused it (it shares the sandbox),
#: so it is never counted as the platform's failure.
SUPERVISOR_FAILURE_AFTER_START_EXIT = 3

# Error-type names (values of errors.ErrorType) the runner can produce.
SYNTAX_ERROR = "syntax_error"
IMPORT_ERROR = "import_error"
TYPE_ERROR = "type_error"
VALUE_ERROR = "value_error"
KEY_ERROR = "key_error"
INDEX_ERROR = "index_error"
ATTRIBUTE_ERROR = "attribute_error"
NAME_ERROR = "name_error"
FILE_NOT_FOUND = "file_not_found"
RECURSION_ERROR = "recursion_error"
DIVISION_ERROR = "division_error"
ENCODING_ERROR = "encoding_error"
JSON_ERROR = "json_error"
RUNTIME_ERROR = "runtime_error"
PERMISSION = "permission"
OS_ERROR = "os_error"
NETWORK_ERROR = "network_error"
NETWORK_TIMEOUT = "network_timeout"
OOM = "oom"
TIMEOUT = "timeout"
SEGFAULT = "segfault"
ABORT = "abort"
BUS_ERROR = "bus_error"
ARITHMETIC_ERROR = "arithmetic_error"
PIPE_ERROR = "pipe_error"
KILLED = "killed"
OUTPUT_TOO_LARGE = "output_too_large"
OUTPUT_ERROR = "output_error"
INTERNAL_ERROR = "internal_error"

#: What the child process may claim: outcomes the user's code could also produce honestly.
CHILD_CLAIMABLE_TYPES: frozenset[str] = frozenset(
    {
        SYNTAX_ERROR,
        IMPORT_ERROR,
        TYPE_ERROR,
        VALUE_ERROR,
        KEY_ERROR,
        INDEX_ERROR,
        ATTRIBUTE_ERROR,
        NAME_ERROR,
        FILE_NOT_FOUND,
        RECURSION_ERROR,
        DIVISION_ERROR,
        ENCODING_ERROR,
        JSON_ERROR,
        RUNTIME_ERROR,
        PERMISSION,
        OS_ERROR,
        NETWORK_ERROR,
        NETWORK_TIMEOUT,
        OOM,
        OUTPUT_TOO_LARGE,
        OUTPUT_ERROR,
    }
)

#: Every type a trusted runner report may carry (the supervisor adds the signal/timeout/setup ones).
RUNNER_TYPES: frozenset[str] = CHILD_CLAIMABLE_TYPES | {
    TIMEOUT,
    SEGFAULT,
    ABORT,
    BUS_ERROR,
    ARITHMETIC_ERROR,
    PIPE_ERROR,
    KILLED,
    INTERNAL_ERROR,
}

#: Signals with their own error type when the user's process dies of them (exit code 128+N).
SIGNAL_ERROR_TYPES: dict[int, tuple[str, str, str]] = {
    11: ("SIGSEGV", SEGFAULT, "segmentation fault"),
    6: ("SIGABRT", ABORT, "aborted"),
    7: ("SIGBUS", BUS_ERROR, "bus error"),
    8: ("SIGFPE", ARITHMETIC_ERROR, "floating-point exception"),
    13: ("SIGPIPE", PIPE_ERROR, "broken pipe"),
    9: ("SIGKILL", KILLED, "killed"),
}

# Characters JSON leaves raw that some line splitters treat as line breaks.
_LINE_BREAKERS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085", "\x1c": "\\u001c",
                  "\x1d": "\\u001d", "\x1e": "\\u001e", "\x0b": "\\u000b", "\x0c": "\\u000c"}
_BREAKER_TABLE = str.maketrans(_LINE_BREAKERS)


def compact_json(value: Any) -> str:
    """One-line JSON: no raw line-break characters anywhere, so `str.splitlines` cannot split it.

    Those characters can only occur inside JSON strings, where their escaped form is equivalent.
    """
    return jsonc.dumps(value, separators=(",", ":"), ensure_ascii=False).translate(_BREAKER_TABLE)


def rfc3339(epoch: float) -> str:
    """UTC timestamp with milliseconds, e.g. `2026-01-02T03:04:05.678Z`."""
    millis = int(epoch * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{millis:03d}Z"


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """Collapse whitespace and bound the length: a `message` is one human line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def summary_of(report: dict[str, Any]) -> dict[str, Any]:
    """The termination-message summary of a full report (the fields the contract lists)."""
    return {
        "v": REPORT_VERSION,
        "nonce": report["nonce"],
        "success": report["success"],
        "exitCode": report["exitCode"],
        "errorType": report["errorType"],
        "exceptionType": report["exceptionType"],
        "message": report["message"],
        "userCodeStarted": report["userCodeStarted"],
        "startedAt": report["startedAt"],
        "finishedAt": report["finishedAt"],
        "durationSeconds": report["durationSeconds"],
    }


def encode_summary(report: dict[str, Any], report_lines: int | None = None) -> bytes:
    """The termination message, always under TERMINATION_LIMIT bytes (the message shrinks if needed).

    `report_lines` tells the reader how many log lines the full report takes (see `marker_lines`).
    """
    summary = summary_of(report)
    if report_lines is not None:
        summary["reportLines"] = report_lines
    data = compact_json(summary).encode()
    while len(data) > TERMINATION_LIMIT and summary["message"]:
        summary["message"] = summary["message"][: len(summary["message"]) // 2]
        data = compact_json(summary).encode()
    return data


#: Characters of report JSON per log line: at most 16000 bytes in UTF-8, under the 16 KiB at which
#: container runtimes split a log line (and another stream's lines may land between the pieces).
REPORT_CHUNK_CHARS = 4000


def marker_lines(report: dict[str, Any]) -> tuple[bytes, int]:
    """The final stdout lines carrying the full report, and how many there are.

    Each line is `SANDBOX-REPORT <nonce> <i>/<n> <piece of the JSON>`; the reader joins pieces 1..n.
    """
    text = compact_json(report)
    pieces = [text[i : i + REPORT_CHUNK_CHARS] for i in range(0, len(text), REPORT_CHUNK_CHARS)] or [""]
    total = len(pieces)
    lines = "".join(f"{MARKER} {report['nonce']} {n}/{total} {piece}\n" for n, piece in enumerate(pieces, 1))
    return lines.encode(), total


def marker_line(report: dict[str, Any]) -> bytes:
    """All the report lines (see `marker_lines`)."""
    return marker_lines(report)[0]
