"""`ExecutionResult`: an Execution's status as one flat, typed value for programs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from execution_operator.api import TERMINAL_PHASES, Phase

#: Phases after which an Execution never changes again.


@dataclass(frozen=True)
class ResultError:
    """`status.error`: branch on `type` (stable); `message` and `details` are for people."""

    type: str
    message: str
    details: str | None = None
    retryable: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_status(cls, error: Mapping[str, Any]) -> ResultError:
        """Read `status.error` leniently: a missing type reads as `internal_error`."""
        return cls(
            type=str(error.get("type") or "internal_error"),
            message=str(error.get("message") or ""),
            details=error.get("details"),
            retryable=bool(error.get("retryable")),
            meta=dict(error.get("meta") or {}),
        )


@dataclass(frozen=True)
class ExecutionResult:
    """What an Execution ended with (or has so far, for one that is still running).

    Read leniently: an error type this client does not know is kept as its string, so a newer
    operator never breaks an older client.
    """

    name: str
    namespace: str
    phase: str | None
    success: bool
    output: Any = None
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    #: `container`, `lastState`, `logMarker` or `unknown` (see docs/errors.md).
    exit_code_source: str | None = None
    error: ResultError | None = None
    #: Seconds the user's code ran in the final attempt.
    execution_time: float | None = None
    attempts: int = 0
    correlation_id: str | None = None
    dead_letter_name: str | None = None

    @property
    def finished(self) -> bool:
        """Whether the phase is final, so the result will not change any more."""
        return self.phase in TERMINAL_PHASES

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ExecutionResult:
        """The result as recorded in an Execution object (`metadata` and `status`)."""
        meta = body.get("metadata") or {}
        status = body.get("status") or {}
        error = status.get("error")
        return cls(
            name=str(meta.get("name", "")),
            namespace=str(meta.get("namespace", "")),
            phase=status.get("phase"),
            success=status.get("phase") == Phase.SUCCEEDED and status.get("success") is not False,
            output=status.get("output"),
            stdout=status.get("stdout") or "",
            stderr=status.get("stderr") or "",
            exit_code=status.get("exitCode"),
            exit_code_source=status.get("exitCodeSource"),
            error=ResultError.from_status(error) if isinstance(error, Mapping) else None,
            execution_time=status.get("executionTimeSeconds"),
            attempts=int(status.get("attempt") or 0),
            correlation_id=status.get("correlationId") or (body.get("spec") or {}).get("correlationId"),
            dead_letter_name=status.get("deadLetterName"),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form (what `execution-operator run -o json` prints)."""
        return asdict(self)

    def raise_for_failure(self) -> ExecutionResult:
        """Raise the `ExecutionFailed` subclass of this result's error family, unless it succeeded."""
        if not self.success:
            from execution_operator.client.exceptions import exception_for

            raise exception_for(self)
        return self
