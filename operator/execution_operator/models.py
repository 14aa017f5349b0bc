"""The API (`api.API_VERSION`) as pydantic models: the one shape the code reads and writes.

The CRDs in `crds/` are the server-side form of the same contract; `tests/unit/test_models.py` and
`tests/unit/test_crds.py` prove the two agree (fields, bounds, defaults, enums). Field names are
snake_case in Python and camelCase on the wire; dump with `to_k8s()` (by alias, no nulls).

Parsing is never stricter than the API server: `from_body` accepts every object the server admitted.
Status models only clamp (keep tails, keep the last N attempts) so a status write never fails
validation because something grew.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from execution_operator.api import (
    API_VERSION,
    TERMINAL_PHASES,
    ConditionStatus,
    Kind,
    Launch,
    Phase,
)
from execution_operator.bounds import (
    CONDITION_REASON_PATTERN,
    DEAD_LETTER_MAX_INPUT_BYTES,
    MAX_ATTEMPT_RECORDS,
    MAX_CODE_CHARS,
    MAX_CONDITIONS,
    MAX_CORRELATION_ID_CHARS,
    MAX_ERROR_DETAILS_CHARS,
    MAX_ERROR_MESSAGE_CHARS,
    MAX_REPLAY_RECORDS,
    MAX_TIMEOUT_SECONDS,
    MAX_WARM_POOL_REPLICAS,
    MODULE_NAME_PATTERN,
    STREAM_TAIL_BYTES,
    json_size,
)
from execution_operator.breaker import BreakerState
from execution_operator.breaker import CircuitState as CircuitState  # re-exported
from execution_operator.breaker import LastFailure as LastFailure  # re-exported
from execution_operator.breaker import ProbeLease as ProbeLease  # re-exported
from execution_operator.errors import ErrorInfo, ErrorType
from execution_operator.quantity import QUANTITY_PATTERN, is_quantity
from execution_operator.timestamps import rfc3339 as rfc3339  # re-exported: models write times


def _tail(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[-limit:]


def _keep_last(limit: int) -> BeforeValidator:
    """Clamp a list to its last `limit` items (the newest) instead of refusing it."""
    return BeforeValidator(lambda v: list(v)[-limit:] if isinstance(v, list | tuple) else v)


#: A stream tail: longer text keeps its last STREAM_TAIL_BYTES characters (the end is what matters).
StreamTail = Annotated[
    str,
    BeforeValidator(lambda v: _tail(v, STREAM_TAIL_BYTES) if isinstance(v, str) else v),
    Field(max_length=STREAM_TAIL_BYTES),
]


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in code; unknown keys are ignored (the server prunes them)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def to_k8s(self) -> dict[str, Any]:
        """The JSON form for the API server: aliases, and no null fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _quantity(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return value  # let pydantic report the type error
    if not is_quantity(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2, 256Mi, 1Gi)")
    return str(value)


#: A Kubernetes quantity, kept as written (`"500m"`, `"1Gi"`); integers become their string form.
Quantity = Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN), BeforeValidator(_quantity)]


# ---------------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------------


class ResourceList(ApiModel):
    """CPU and memory for the sandbox container; requests are set equal to limits."""

    cpu: Quantity | None = None
    memory: Quantity | None = None


class Condition(ApiModel):
    """metav1.Condition. `last_transition_time` is filled by `set_condition`."""

    type: str = Field(min_length=1, max_length=316)
    status: ConditionStatus
    reason: str = Field(min_length=1, max_length=1024, pattern=CONDITION_REASON_PATTERN)
    message: str = Field(default="", max_length=32768)
    last_transition_time: str | None = None
    observed_generation: int | None = Field(default=None, ge=0)


def get_condition(conditions: list[Condition], type_: str) -> Condition | None:
    """The condition of that type, if present."""
    return next((c for c in conditions if c.type == type_), None)


def set_condition(conditions: list[Condition], new: Condition, now: str) -> list[Condition]:
    """A new list with `new` in place of its type; `lastTransitionTime` moves only when status does.

    Pure: the input list is not changed. Order is kept; a new type is appended.
    """
    old = get_condition(conditions, new.type)
    keep_time = old is not None and old.status == new.status and old.last_transition_time
    stamped = new.model_copy(update={"last_transition_time": old.last_transition_time if keep_time and old else now})
    if old is None:
        return [*conditions, stamped]
    return [stamped if c.type == new.type else c for c in conditions]


# ---------------------------------------------------------------------------------------------------
# Execution
# ---------------------------------------------------------------------------------------------------


class RetryPolicy(ApiModel):
    """Attempts for retryable error types, with exponential backoff and jitter between them."""

    max_attempts: int = Field(default=2, ge=1, le=10)
    backoff_seconds: int = Field(default=1, ge=0, le=300)
    max_backoff_seconds: int = Field(default=30, ge=0, le=3600)

    @model_validator(mode="after")
    def _backoff_within_max(self) -> Self:
        if self.backoff_seconds > self.max_backoff_seconds:
            raise ValueError("backoffSeconds must not exceed maxBackoffSeconds")
        return self


class ExecutionSpec(ApiModel):
    """What to run. Immutable after create except `cancel` (enforced by the CRD's CEL rules)."""

    code: str = Field(min_length=1, max_length=MAX_CODE_CHARS)
    input: Any = None
    execution_class_name: str = Field(default="default", min_length=1, max_length=253)
    timeout_seconds: int = Field(default=30, ge=1, le=MAX_TIMEOUT_SECONDS)
    resources: ResourceList | None = None
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    correlation_id: str | None = Field(default=None, max_length=MAX_CORRELATION_ID_CHARS)
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    cancel: bool = False




class ExitCodeSource(StrEnum):
    """Where `status.exitCode` came from, in the order the operator tries them."""

    CONTAINER = "container"  # containerStatuses[].state.terminated.exitCode
    LAST_STATE = "lastState"  # containerStatuses[].lastState.terminated.exitCode
    LOG_MARKER = "logMarker"  # the runner's trusted report
    UNKNOWN = "unknown"  # none of them; exitCode is absent


class AttemptRecord(ApiModel):
    """One attempt (one pod) in `status.attempts`."""

    attempt: int = Field(ge=1)
    pod_name: str | None = Field(default=None, max_length=253)
    start_time: str | None = None
    completion_time: str | None = None
    exit_code: int | None = None
    error_type: ErrorType | None = None
    launch: Launch | None = None


def _clamp_error(error: ErrorInfo | None) -> ErrorInfo | None:
    if error is None:
        return None
    update: dict[str, Any] = {}
    if len(error.message) > MAX_ERROR_MESSAGE_CHARS:
        update["message"] = error.message[:MAX_ERROR_MESSAGE_CHARS]
    if error.details is not None and len(error.details) > MAX_ERROR_DETAILS_CHARS:
        update["details"] = _tail(error.details, MAX_ERROR_DETAILS_CHARS)
    return error.model_copy(update=update) if update else error


class ExecutionStatus(ApiModel):
    """What happened. Written only by the operator (status subresource)."""

    phase: Phase | None = None
    success: bool | None = None
    output: Any = None
    stdout: StreamTail | None = None
    stderr: StreamTail | None = None
    stdout_truncated: bool | None = None
    stderr_truncated: bool | None = None
    exit_code: int | None = None
    exit_code_source: ExitCodeSource | None = None
    error: ErrorInfo | None = None
    attempt: int | None = Field(default=None, ge=0)
    attempts: Annotated[list[AttemptRecord], _keep_last(MAX_ATTEMPT_RECORDS), Field(max_length=MAX_ATTEMPT_RECORDS)] = (
        Field(default_factory=list)
    )
    #: Attempts ended by a disruption (eviction, node loss, pod deleted): not charged to `retry`.
    disruptions: int | None = Field(default=None, ge=0)
    pod_name: str | None = Field(default=None, max_length=253)
    #: How the current attempt's pod was obtained (warm pool claim or cold launch).
    launch: Launch | None = None
    #: The first attempt's pod creation.
    start_time: str | None = None
    #: When the current attempt's user code started (from the runner's report).
    launch_time: str | None = None
    completion_time: str | None = None
    #: The final attempt's user-code run time.
    execution_time_seconds: float | None = Field(default=None, ge=0)
    #: When the next attempt may launch (phase Retrying).
    next_attempt_at: str | None = None
    correlation_id: str | None = Field(default=None, max_length=MAX_CORRELATION_ID_CHARS)
    dead_letter_name: str | None = Field(default=None, max_length=253)
    observed_generation: int | None = Field(default=None, ge=0)
    conditions: list[Condition] = Field(default_factory=list, max_length=MAX_CONDITIONS)

    @model_validator(mode="before")
    @classmethod
    def _mark_clamped_streams(cls, data: Any) -> Any:
        """A stream longer than the tail bound is cut below, so flag it as truncated here."""
        if not isinstance(data, Mapping):
            return data
        marked = dict(data)
        for stream in ("stdout", "stderr"):
            text = marked.get(stream)
            if isinstance(text, str) and len(text) > STREAM_TAIL_BYTES:
                marked.pop(f"{stream}_truncated", None)
                marked[f"{stream}Truncated"] = True
        return marked

    @field_validator("error")
    @classmethod
    def _clamp_error(cls, value: ErrorInfo | None) -> ErrorInfo | None:
        return _clamp_error(value)

    @property
    def terminal(self) -> bool:
        """Whether the phase is final."""
        return self.phase in TERMINAL_PHASES


# ---------------------------------------------------------------------------------------------------
# ExecutionClass
# ---------------------------------------------------------------------------------------------------


class EnvVar(ApiModel):
    """An environment variable the class sets in its sandboxes."""

    name: str = Field(min_length=1, max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    value: str = Field(default="", max_length=32768)


class ClassResources(ApiModel):
    """Per-class resources: `defaults` fill what an Execution leaves out, `max` caps what it asks."""

    defaults: ResourceList | None = None
    max: ResourceList | None = None


class CircuitBreakerPolicy(ApiModel):
    """Failure threshold, open period and probe successes of the breaker."""

    failure_threshold: int = Field(default=5, ge=1, le=1000)
    open_seconds: int = Field(default=30, ge=1, le=86400)
    success_threshold: int = Field(default=2, ge=1, le=1000)
    #: Probe launches allowed at once while half-open; defaults to `success_threshold`.
    half_open_max_probes: int | None = Field(default=None, ge=1, le=1000)


class DeadLetterPolicy(StrEnum):
    """Which failures leave a DeadLetter: all, infrastructure failures only, or none."""

    ALL = "All"
    INFRASTRUCTURE = "Infrastructure"
    NONE = "None"


class ExecutionClassSpec(ApiModel):
    """A runtime for Executions: image, entrypoint, resources, limits and failure policy."""

    image: str = Field(min_length=1, max_length=1024)
    command: list[str] | None = Field(default=None, max_length=64)
    env: list[EnvVar] = Field(default_factory=list, max_length=128)
    resources: ClassResources | None = None
    max_timeout_seconds: int = Field(default=MAX_TIMEOUT_SECONDS, ge=1, le=MAX_TIMEOUT_SECONDS)
    pending_timeout_seconds: int = Field(default=120, ge=1, le=3600)
    runtime_class_name: str | None = Field(default=None, min_length=1, max_length=253)
    allow_network: bool = False
    max_concurrent: int | None = Field(default=None, ge=1)
    circuit_breaker: CircuitBreakerPolicy = Field(default_factory=CircuitBreakerPolicy)
    #: Modules a warm pool's pods import before waiting for their payload.
    warm_imports: list[Annotated[str, Field(min_length=1, max_length=128, pattern=MODULE_NAME_PATTERN)]] = Field(
        default_factory=list, max_length=32
    )
    dead_letter: DeadLetterPolicy = DeadLetterPolicy.ALL


#: `status.circuitBreaker` is the breaker's own state model (breaker.py), re-exported here.
CircuitBreakerStatus = BreakerState


class ExecutionClassStatus(ApiModel):
    """`status` of an ExecutionClass: its circuit breaker and conditions."""

    circuit_breaker: BreakerState | None = None
    conditions: list[Condition] = Field(default_factory=list, max_length=MAX_CONDITIONS)
    observed_generation: int | None = Field(default=None, ge=0)


# ---------------------------------------------------------------------------------------------------
# DeadLetter
# ---------------------------------------------------------------------------------------------------


class ExecutionRef(ApiModel):
    """Names an Execution; the uid tells a recreated Execution of the same name apart."""

    name: str = Field(min_length=1, max_length=253)
    uid: str | None = Field(default=None, max_length=128)


class DeadLetterSpec(ApiModel):
    """The snapshot of a failed Execution (the fields docs/dead-letters.md lists, under `spec`)."""

    execution_ref: ExecutionRef
    execution_spec: ExecutionSpec
    error: ErrorInfo
    #: How many attempts were made.
    attempts: int = Field(ge=0)
    attempt_history: Annotated[
        list[AttemptRecord], _keep_last(MAX_ATTEMPT_RECORDS), Field(max_length=MAX_ATTEMPT_RECORDS)
    ] = Field(default_factory=list)
    exit_code: int | None = None
    exit_code_source: ExitCodeSource | None = None
    stdout: StreamTail | None = None
    stderr: StreamTail | None = None
    pod_name: str | None = Field(default=None, max_length=253)
    failed_at: str | None = None
    correlation_id: str | None = Field(default=None, max_length=MAX_CORRELATION_ID_CHARS)
    execution_class_name: str | None = Field(default=None, max_length=253)
    #: True when `executionSpec.input` was replaced by a marker (see `input_snapshot`).
    input_truncated: bool = False

    @field_validator("error")
    @classmethod
    def _clamp_error(cls, value: ErrorInfo) -> ErrorInfo:
        clamped = _clamp_error(value)
        assert clamped is not None
        return clamped


def input_snapshot(value: Any, limit_bytes: int = DEAD_LETTER_MAX_INPUT_BYTES) -> tuple[Any, bool]:
    """The input to store in a DeadLetter, and whether it was replaced by a size marker.

    A DeadLetter must fit in etcd next to the code and the stream tails, so a large input is replaced
    by `{"truncated": true, "originalBytes": N}`; such a dead letter cannot be replayed as is.
    """
    size = json_size(value)
    if size <= limit_bytes:
        return value, False
    return {"truncated": True, "originalBytes": size}, True


class Replay(ApiModel):
    """One replay of a DeadLetter: the Execution it created, and when."""

    name: str = Field(min_length=1, max_length=253)
    time: str


class DeadLetterStatus(ApiModel):
    """`status` of a DeadLetter: its latest replays."""

    replays: Annotated[list[Replay], _keep_last(MAX_REPLAY_RECORDS), Field(max_length=MAX_REPLAY_RECORDS)] = Field(
        default_factory=list
    )


# ---------------------------------------------------------------------------------------------------
# Whole objects
# ---------------------------------------------------------------------------------------------------


class _Resource(ApiModel):
    KIND: ClassVar[str]

    metadata: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Self:
        """Parse an object as the API server (or kopf's `body`) returns it; a null status is empty."""
        data = {
            "metadata": dict(body.get("metadata") or {}),
            "spec": dict(body.get("spec") or {}),
            "status": dict(body.get("status") or {}),
        }
        return cls.model_validate(data)

    def to_body(self) -> dict[str, Any]:
        """The full object for a create call (apiVersion, kind, metadata, spec, status)."""
        return {"apiVersion": API_VERSION, "kind": self.KIND, **self.to_k8s()}

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str | None:
        namespace = self.metadata.get("namespace")
        return None if namespace is None else str(namespace)

    @property
    def uid(self) -> str | None:
        uid = self.metadata.get("uid")
        return None if uid is None else str(uid)

    @property
    def generation(self) -> int | None:
        generation = self.metadata.get("generation")
        return None if generation is None else int(generation)


class Execution(_Resource):
    """Code and input to run in a sandbox, with the typed result in its status."""

    KIND: ClassVar[str] = Kind.EXECUTION

    spec: ExecutionSpec
    status: ExecutionStatus = Field(default_factory=ExecutionStatus)


class ExecutionClass(_Resource):
    """A runtime and failure policy that Executions name in `spec.executionClass`."""

    KIND: ClassVar[str] = Kind.EXECUTION_CLASS

    spec: ExecutionClassSpec
    status: ExecutionClassStatus = Field(default_factory=ExecutionClassStatus)


class WarmPoolSpec(ApiModel):
    """Keep `replicas` ready, unclaimed sandbox pods of one class in the pool's namespace."""

    execution_class_name: str = Field(min_length=1, max_length=253)
    replicas: int = Field(default=1, ge=0, le=MAX_WARM_POOL_REPLICAS)


class WarmPoolStatus(ApiModel):
    """What a pool holds; written only by the operator."""

    replicas: int | None = Field(default=None, ge=0)
    ready_replicas: int | None = Field(default=None, ge=0)
    claimed: int | None = Field(default=None, ge=0)
    selector: str | None = Field(default=None, max_length=1024)
    observed_generation: int | None = Field(default=None, ge=0)
    conditions: list[Condition] = Field(default_factory=list, max_length=MAX_CONDITIONS)


class WarmPool(_Resource):
    """A pool of ready, unclaimed sandbox pods of one ExecutionClass."""

    KIND: ClassVar[str] = Kind.WARM_POOL

    spec: WarmPoolSpec
    status: WarmPoolStatus = Field(default_factory=WarmPoolStatus)


class DeadLetter(_Resource):
    """What a failed Execution left behind, kept for inspection and replay."""

    KIND: ClassVar[str] = Kind.DEAD_LETTER

    spec: DeadLetterSpec
    status: DeadLetterStatus = Field(default_factory=DeadLetterStatus)
