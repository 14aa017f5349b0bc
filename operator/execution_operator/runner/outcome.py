"""The outcome of a run, decided from what the supervisor observed of it.

Signals, the timeout and OOM come from the wait status and the supervisor's own clocks; the harness's
result frame is accepted only when it is a claim the code could make honestly and matches the exit.
"""

from __future__ import annotations

import os

from execution_operator.runner import jsonc
from execution_operator.runner import report as r

# The C module behind `signal`: its Python wrapper builds enums at import, which costs each execution's
# start-up milliseconds of CPU.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from typing import Any
else:
    import _signal


class Outcome:
    """What the supervisor decided, before it is turned into the report."""

    def __init__(
        self,
        success: bool,
        exit_code: int | None,
        error_type: str | None = None,
        message: str = "",
        exception_type: str | None = None,
        details: str | None = None,
        output: Any = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.success = success
        self.exit_code = exit_code
        self.error_type = error_type
        self.message = message
        self.exception_type = exception_type
        self.details = details
        self.output = output
        self.meta = meta if meta is not None else {}


def decide(
    status: int | None,
    rusage: Any,
    *,
    code_started: bool,
    setup_error: str | None,
    startup_expired: bool,
    startup_limit: float,
    timed_out: bool,
    timeout_seconds: float,
    result_frame: tuple[dict[str, Any], bytes] | None,
    output_limit: int,
    oom_rose: bool,
) -> Outcome:
    """The outcome from the wait status, the timeout and whether the cgroup's OOM kill count rose.

    Args:
        status: The harness's wait status (None when it was never reaped: read as 0).
        rusage: The harness's resource usage from `wait4`, or None.
        code_started: Whether the harness reported the user's code as started.
        setup_error: The harness's report of why it could not start the code, if it sent one.
        startup_expired: Whether the supervisor killed the harness for not starting the code in time.
        startup_limit: That start-up limit, in seconds.
        timed_out: Whether the supervisor killed the code for running past its timeout.
        timeout_seconds: That timeout.
        result_frame: The harness's last result frame (its JSON header and the output after it), if any.
        output_limit: The most bytes of JSON output a success may have.
        oom_rose: Whether the cgroup's OOM kill count rose during the run.
    """
    status = status if status is not None else 0
    signum = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    exited = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    if not code_started:
        if setup_error:
            reason = setup_error
        elif startup_expired:
            reason = f"the harness did not start the code within {startup_limit:.0f}s"
        elif signum is not None:
            reason = f"the harness was killed by signal {_signame(signum)} before the code started"
        else:
            reason = f"the harness exited with code {exited} before the code started"
        return Outcome(False, None, r.INTERNAL_ERROR, f"The runner could not start the code: {reason}")
    meta: dict[str, Any] = {}
    if rusage is not None:
        meta["peakMemoryKiB"] = int(rusage.ru_maxrss)
    if timed_out:
        meta["timeoutSeconds"] = int(timeout_seconds) if timeout_seconds == int(timeout_seconds) else timeout_seconds
        message = f"The code ran longer than its timeout of {meta['timeoutSeconds']}s and was stopped"
        return Outcome(False, 137, r.TIMEOUT, message, meta=meta)
    if signum is not None:
        return _signalled(signum, oom_rose, meta)
    claimed = _validated_frame(result_frame, exited, output_limit)
    if claimed is not None:
        claimed.meta = {**meta, **claimed.meta}
        return claimed
    if exited == 0:
        message = "The code ended the interpreter directly (exit code 0) before its result was recorded"
        return Outcome(False, 0, r.RUNTIME_ERROR, message, meta=meta)
    return Outcome(False, exited, r.RUNTIME_ERROR, f"The code exited with code {exited}", meta=meta)


def _signalled(signum: int, oom_rose: bool, meta: dict[str, Any]) -> Outcome:
    code = 128 + signum
    name = _signame(signum)
    meta["signal"] = name
    if signum == _signal.SIGKILL and oom_rose:
        message = "The code was killed for going over its memory limit (out of memory)"
        return Outcome(False, code, r.OOM, message, meta=meta)
    known = r.SIGNAL_ERROR_TYPES.get(signum)
    if known is not None:
        return Outcome(False, code, known[1],
                       f"The code was killed by signal {name} (exit code {code}): {known[2]}", meta=meta)
    message = f"The code was killed by signal {name} (exit code {code})"
    return Outcome(False, code, r.RUNTIME_ERROR, message, meta=meta)


def _validated_frame(result_frame: tuple[dict[str, Any], bytes] | None, exited: int | None,
                     output_limit: int) -> Outcome | None:
    """Accept the harness's claim only if it is one the code could make honestly and it matches."""
    if result_frame is None:
        return None
    frame, body = result_frame
    exit_code = frame.get("exitCode")
    if not isinstance(exit_code, int) or isinstance(exit_code, bool) or exit_code != exited:
        return None
    if frame.get("success") is True:
        if exit_code != 0:
            return None
        if len(body) > output_limit:
            return Outcome(False, 0, r.OUTPUT_TOO_LARGE,
                           f"The output is {len(body)} bytes of JSON, over the limit of {output_limit} bytes")
        try:
            output = jsonc.loads(body) if body else None
        except ValueError:
            return Outcome(False, 0, r.OUTPUT_ERROR, "The output is not valid JSON")
        return Outcome(True, 0, None, "", output=output)
    error_type = frame.get("errorType")
    if frame.get("success") is not False or error_type not in r.CHILD_CLAIMABLE_TYPES:
        return None
    return _claimed_failure(frame, exit_code, error_type)


def _claimed_failure(frame: dict[str, Any], exit_code: int, error_type: str) -> Outcome:
    """The code's own failure as the harness reported it, its fields bounded."""
    meta: dict[str, Any] = {}
    exception_type = frame.get("exceptionType")
    if not isinstance(exception_type, str):
        exception_type = None
    else:
        exception_type = exception_type[: r.EXCEPTION_TYPE_LIMIT]
        meta["exceptionType"] = exception_type
    lineno = frame.get("lineno")
    if isinstance(lineno, int) and not isinstance(lineno, bool):
        meta["lineno"] = lineno
    details = frame.get("details")
    if not isinstance(details, str):
        details = None
    elif len(details) > r.DETAILS_LIMIT:
        details = "...\n" + details[-r.DETAILS_LIMIT :]
    message = r.one_line(str(frame.get("message") or error_type))
    return Outcome(False, exit_code, error_type, message, exception_type, details, meta=meta)


def _signame(signum: int) -> str:
    import signal  # only when the code died of a signal: its enum of names is not free to import

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
