"""The client's exceptions: one family per kind of failure, derived from the error-type table.

A caller branches on a class (`except ResourceLimitExceeded`) or on `exc.error_type` alone. The
families are computed from `execution_operator.errors` (the project's single table of error types),
so a type added there without a family is caught by a unit test, not by a user.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from execution_operator.api import Phase
from execution_operator.errors import INFRASTRUCTURE_TYPES, SIGNAL_TYPES, USER_CODE_TYPES, ErrorType

if TYPE_CHECKING:
    from execution_operator.client.result import ExecutionResult

#: How many trailing lines of stderr a failure's message quotes (the log tail people look at first).
STDERR_TAIL_LINES = 5


class ExecutionError(Exception):
    """Everything this client raises."""

    #: The exit code of `execution-operator run` for this kind of failure.
    exit_status: ClassVar[int] = 70


class ExecutionFailed(ExecutionError):
    """The Execution ended without success; `result` is everything it recorded.

    Raised as this base class only for an error type this client does not know (a newer operator).
    """

    def __init__(self, result: ExecutionResult) -> None:
        self.result = result
        super().__init__(_failure_message(result))

    @property
    def error_type(self) -> str:
        """`status.error.type` as recorded, or `unknown` when there is none."""
        return self.result.error.type if self.result.error else "unknown"

    @property
    def retryable(self) -> bool:
        """As the operator recorded it: true when running the same request again may succeed."""
        return bool(self.result.error and self.result.error.retryable)

    @property
    def exit_code(self) -> int | None:
        """The user code's exit code, when it got as far as exiting."""
        return self.result.exit_code


class UserCodeError(ExecutionFailed):
    """The code itself failed: an uncaught exception, `sys.exit(N)`, a crash signal, a bad output."""

    exit_status = 65


class ResourceLimitExceeded(ExecutionFailed):
    """The code went over a limit: memory (`oom`), time (`timeout`), output size (`output_too_large`)."""

    exit_status = 66


class InfrastructureError(ExecutionFailed):
    """The platform failed to run the code: image, scheduling, eviction, node loss, operator internals."""

    exit_status = 69


class ExecutionUnavailable(ExecutionFailed):
    """The class's circuit breaker is open: the platform is failing, try again later."""

    exit_status = 75


class InvalidExecution(ExecutionFailed):
    """The request breaks a rule (`validation_error`): fix it, running it again will not help."""

    exit_status = 64


class ExecutionCancelled(ExecutionFailed):
    """The Execution was cancelled (`spec.cancel`, a client's cancel, Ctrl-C in `run`)."""

    exit_status = 130


class WaitTimeout(ExecutionError, TimeoutError):
    """The wait ran out before the Execution finished; `cancelled` says whether it was cancelled."""

    exit_status = 124

    def __init__(self, name: str, namespace: str, phase: str | None, *, waited: float, cancelled: bool,
                 result: ExecutionResult | None = None) -> None:
        self.name = name
        self.namespace = namespace
        self.phase = phase
        self.waited = waited
        self.cancelled = cancelled
        #: The Execution as last seen (terminal when the cancel completed within its grace period).
        self.result = result
        fate = ("it was cancelled" if cancelled else
                "it was left running (wait again, or cancel it)")
        super().__init__(f"Execution {namespace}/{name} did not finish within {waited:g}s "
                         f"(phase {phase or 'Pending'}); {fate}")


class ClientError(ExecutionError):
    """The API itself failed: unreachable cluster, credentials, RBAC, missing namespace or CRDs.

    `reason` is a short stable word to branch on (`Unreachable`, `Unauthorized`, `Forbidden`,
    `NamespaceNotFound`, `NotInstalled`, `NotFound`, `Invalid`, `Deleted`, `ServerError`,
    `Credentials`, `MissingDependency`); the message says what to do about it.
    """

    exit_status = 78

    def __init__(self, message: str, *, reason: str, http_status: int | None = None) -> None:
        self.reason = reason
        self.http_status = http_status
        super().__init__(message)


#: The limits a user can raise (memory, timeout) or must stay under (output size).
RESOURCE_LIMIT_TYPES: frozenset[ErrorType] = frozenset(
    {ErrorType.OOM, ErrorType.TIMEOUT, ErrorType.OUTPUT_TOO_LARGE}
)
_SIGNAL_ERROR_TYPES = frozenset(error_type for _, error_type in SIGNAL_TYPES.values())


def _family(error_type: ErrorType) -> type[ExecutionFailed] | None:
    """The family of a type, first rule that matches; None for a type no rule covers."""
    if error_type is ErrorType.CANCELLED:
        return ExecutionCancelled
    if error_type is ErrorType.VALIDATION_ERROR:
        return InvalidExecution
    if error_type is ErrorType.SERVICE_UNAVAILABLE:
        return ExecutionUnavailable
    if error_type in RESOURCE_LIMIT_TYPES:
        return ResourceLimitExceeded
    if error_type in INFRASTRUCTURE_TYPES:
        return InfrastructureError
    if error_type in USER_CODE_TYPES or error_type in _SIGNAL_ERROR_TYPES:
        return UserCodeError
    return None


#: Every known error type's family (a unit test checks that none is missing).
FAMILIES: dict[str, type[ExecutionFailed]] = {
    str(error_type): family for error_type in ErrorType if (family := _family(error_type)) is not None
}


def family_for(error_type: str | None) -> type[ExecutionFailed]:
    """The exception class for an error type; the base class for a type this client does not know."""
    if error_type is None:
        return ExecutionFailed
    return FAMILIES.get(error_type, ExecutionFailed)


def exception_for(result: ExecutionResult) -> ExecutionFailed:
    """The exception for a failed or cancelled result: the family of its error type."""
    if result.phase == Phase.CANCELLED and result.error is None:
        return ExecutionCancelled(result)
    return family_for(result.error.type if result.error else None)(result)


def exit_status_for(result: ExecutionResult) -> int:
    """`run`'s exit code: 0, the user code's own non-zero exit code, else its family's code."""
    if result.success:
        return 0
    exc = exception_for(result)
    if isinstance(exc, UserCodeError) and result.exit_code:
        return result.exit_code
    return exc.exit_status


def _failure_message(result: ExecutionResult) -> str:
    error = result.error
    head = f"Execution {result.namespace}/{result.name} "
    head += f"failed: {error.type}: {error.message}" if error else f"ended {result.phase or 'without success'}"
    tail = [line for line in result.stderr.rstrip("\n").split("\n") if line][-STDERR_TAIL_LINES:]
    if tail:
        head += "\nstderr (last lines):\n  " + "\n  ".join(line[:300] for line in tail)
    return head
