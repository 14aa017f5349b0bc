"""The stable error-type contract: every type, whether it is retried, whether it trips the breaker.

This table is the single source for the flags; docs/errors.md documents it for users.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field


class ErrorType(StrEnum):
    """`status.error.type`: callers branch on these names, so they never change."""

    # The user's Python exception.
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
    # Resource limits and signals.
    OOM = "oom"
    TIMEOUT = "timeout"
    SEGFAULT = "segfault"
    ABORT = "abort"
    BUS_ERROR = "bus_error"
    ARITHMETIC_ERROR = "arithmetic_error"
    PIPE_ERROR = "pipe_error"
    KILLED = "killed"
    CANCELLED = "cancelled"
    # Output contract.
    OUTPUT_TOO_LARGE = "output_too_large"
    OUTPUT_ERROR = "output_error"
    # The request itself.
    VALIDATION_ERROR = "validation_error"
    # Infrastructure.
    IMAGE_PULL_ERROR = "image_pull_error"
    INVALID_IMAGE = "invalid_image"
    CONFIG_ERROR = "config_error"
    UNSCHEDULABLE = "unschedulable"
    EVICTED = "evicted"
    NODE_LOST = "node_lost"
    POD_DELETED = "pod_deleted"
    QUOTA_EXCEEDED = "quota_exceeded"
    SERVICE_UNAVAILABLE = "service_unavailable"
    INTERNAL_ERROR = "internal_error"


class ErrorTypeFlags(NamedTuple):
    """How the operator treats an error type: whether to retry it and whether it counts against the breaker."""

    retryable: bool
    trips_breaker: bool
    #: A disruption is not the user's fault: it has its own retry cap instead of the user's budget.
    disruption: bool = False


_PLAIN = ErrorTypeFlags(retryable=False, trips_breaker=False)

ERROR_FLAGS: dict[ErrorType, ErrorTypeFlags] = {
    **{t: _PLAIN for t in ErrorType},
    ErrorType.NETWORK_ERROR: ErrorTypeFlags(True, False),
    ErrorType.NETWORK_TIMEOUT: ErrorTypeFlags(True, False),
    ErrorType.KILLED: ErrorTypeFlags(True, False),
    ErrorType.IMAGE_PULL_ERROR: ErrorTypeFlags(True, True),
    ErrorType.INVALID_IMAGE: ErrorTypeFlags(False, True),
    ErrorType.CONFIG_ERROR: ErrorTypeFlags(False, True),
    ErrorType.UNSCHEDULABLE: ErrorTypeFlags(True, True),
    ErrorType.EVICTED: ErrorTypeFlags(True, False, disruption=True),
    ErrorType.NODE_LOST: ErrorTypeFlags(True, False, disruption=True),
    ErrorType.POD_DELETED: ErrorTypeFlags(True, False, disruption=True),
    ErrorType.QUOTA_EXCEEDED: ErrorTypeFlags(True, False),
    ErrorType.SERVICE_UNAVAILABLE: ErrorTypeFlags(True, False),
    ErrorType.INTERNAL_ERROR: ErrorTypeFlags(True, True),
}

#: Types that come from what the user's code did (as opposed to the platform).
USER_CODE_TYPES: frozenset[ErrorType] = frozenset(
    {
        ErrorType.SYNTAX_ERROR,
        ErrorType.IMPORT_ERROR,
        ErrorType.TYPE_ERROR,
        ErrorType.VALUE_ERROR,
        ErrorType.KEY_ERROR,
        ErrorType.INDEX_ERROR,
        ErrorType.ATTRIBUTE_ERROR,
        ErrorType.NAME_ERROR,
        ErrorType.FILE_NOT_FOUND,
        ErrorType.RECURSION_ERROR,
        ErrorType.DIVISION_ERROR,
        ErrorType.ENCODING_ERROR,
        ErrorType.JSON_ERROR,
        ErrorType.RUNTIME_ERROR,
        ErrorType.PERMISSION,
        ErrorType.OS_ERROR,
        ErrorType.NETWORK_ERROR,
        ErrorType.NETWORK_TIMEOUT,
        ErrorType.OOM,
        ErrorType.OUTPUT_TOO_LARGE,
        ErrorType.OUTPUT_ERROR,
    }
)

#: Infrastructure failures (for the DeadLetter policy `Infrastructure`).
INFRASTRUCTURE_TYPES: frozenset[ErrorType] = frozenset(
    {
        ErrorType.IMAGE_PULL_ERROR,
        ErrorType.INVALID_IMAGE,
        ErrorType.CONFIG_ERROR,
        ErrorType.UNSCHEDULABLE,
        ErrorType.EVICTED,
        ErrorType.NODE_LOST,
        ErrorType.POD_DELETED,
        ErrorType.QUOTA_EXCEEDED,
        ErrorType.SERVICE_UNAVAILABLE,
        ErrorType.INTERNAL_ERROR,
        ErrorType.KILLED,
    }
)

#: Exit codes 128+N for the signals that have their own type.
SIGNAL_TYPES: dict[int, tuple[str, ErrorType]] = {
    139: ("SIGSEGV", ErrorType.SEGFAULT),
    134: ("SIGABRT", ErrorType.ABORT),
    135: ("SIGBUS", ErrorType.BUS_ERROR),
    136: ("SIGFPE", ErrorType.ARITHMETIC_ERROR),
    141: ("SIGPIPE", ErrorType.PIPE_ERROR),
    137: ("SIGKILL", ErrorType.KILLED),
    143: ("SIGTERM", ErrorType.CANCELLED),
}


def flags(error_type: ErrorType | str) -> ErrorTypeFlags:
    """The handling of `error_type`; a name that is not an error type raises ValueError."""
    return ERROR_FLAGS[ErrorType(error_type)]


def condition_reason(error_type: ErrorType | str) -> str:
    """CamelCase reason for the `Succeeded=False` condition, e.g. `division_error` -> `DivisionError`."""
    return "".join(part.capitalize() for part in str(error_type).split("_"))


class ErrorInfo(BaseModel):
    """The error envelope in `status.error`: callers branch on `type`; `message` wording may change."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: ErrorType
    message: str
    details: str | None = None
    retryable: bool
    meta: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(
        cls, error_type: ErrorType, message: str, details: str | None = None, **meta: Any
    ) -> ErrorInfo:
        """Build an envelope whose `retryable` flag always comes from the contract table."""
        one_line = " ".join(message.split())[:1024]
        return cls(
            type=error_type,
            message=one_line,
            details=details,
            retryable=flags(error_type).retryable,
            meta={k: v for k, v in meta.items() if v is not None},
        )
