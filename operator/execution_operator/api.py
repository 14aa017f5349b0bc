"""The names of the public API, in one place.

Group, version, kinds, resources, labels, annotations, condition types and reasons, phases.

Users, scripts and dashboards depend on every one of these strings, so the code imports them from here
and never spells them out (a test holds the operator's code and the CRDs to it). Standard library only:
the sandbox runner may import it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

GROUP: Final = "sandbox.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
#: The value of `app.kubernetes.io/managed-by` on everything the operator makes, and its Event source.
MANAGED_BY: Final = "execution-operator"
#: The `kubectl get sandbox` category every kind of the group is in.
CATEGORY: Final = "sandbox"


class Kind(StrEnum):
    """The kinds of the API group, as in the `kind` of their objects."""

    EXECUTION = "Execution"
    EXECUTION_CLASS = "ExecutionClass"
    DEAD_LETTER = "DeadLetter"
    WARM_POOL = "WarmPool"


#: Plural resource names (the URL path segments).
EXECUTIONS: Final = "executions"
EXECUTION_CLASSES: Final = "executionclasses"
DEAD_LETTERS: Final = "deadletters"
WARM_POOLS: Final = "warmpools"
RESOURCES: Final = {Kind.EXECUTION: EXECUTIONS, Kind.EXECUTION_CLASS: EXECUTION_CLASSES,
                    Kind.DEAD_LETTER: DEAD_LETTERS, Kind.WARM_POOL: WARM_POOLS}
SHORT_NAMES: Final = {Kind.EXECUTION: "ex", Kind.EXECUTION_CLASS: "exc", Kind.DEAD_LETTER: "dl",
                      Kind.WARM_POOL: "wp"}

# --- labels ----------------------------------------------------------------------------------------------
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_NAME: Final = "app.kubernetes.io/name"
#: On sandbox pods (the Execution's name, label-safe), DeadLetters and replayed Executions.
LABEL_EXECUTION: Final = f"{GROUP}/execution"
LABEL_ATTEMPT: Final = f"{GROUP}/attempt"
LABEL_EXECUTION_CLASS: Final = f"{GROUP}/execution-class"
LABEL_CORRELATION_ID: Final = f"{GROUP}/correlation-id"
LABEL_ERROR_TYPE: Final = f"{GROUP}/error-type"
#: On an Execution made by replaying a DeadLetter: the DeadLetter's name.
LABEL_REPLAY_OF: Final = f"{GROUP}/replay-of"
#: `deny` on sandbox pods the namespace's deny-all NetworkPolicy selects.
LABEL_NETWORK: Final = f"{GROUP}/network"
#: On an unclaimed pod of a WarmPool: the pool's name (label-safe); the pool's `status.selector`.
LABEL_WARM_POOL: Final = f"{GROUP}/warm-pool"
#: On a pod of a WarmPool: the hash of the pod spec it was built from (another hash: replaced).
LABEL_POOL_TEMPLATE: Final = f"{GROUP}/pool-template"
#: On a claimed pod: the pool it came from.
LABEL_CLAIMED_FROM: Final = f"{GROUP}/claimed-from"
#: On the Executions of one `run_many` batch of the client.
LABEL_CLIENT_BATCH: Final = f"{GROUP}/client-batch"

# --- annotations -----------------------------------------------------------------------------------------
#: On an Execution: the correlation id when `spec.correlationId` is not set.
ANNOTATION_CORRELATION_ID: Final = f"{GROUP}/correlation-id"
#: On a sandbox pod: the code and the input, read by the runner through the downward API.
ANNOTATION_CODE: Final = f"{GROUP}/code"
ANNOTATION_INPUT: Final = f"{GROUP}/input"
#: On a DeadLetter: `true` asks for a replay; `replay-pending` marks one being made.
ANNOTATION_REPLAY: Final = f"{GROUP}/replay"
ANNOTATION_REPLAY_PENDING: Final = f"{GROUP}/replay-pending"
#: On a replayed Execution: the DeadLetter's whole name (the label of the same name may be shortened).
ANNOTATION_REPLAY_OF: Final = f"{GROUP}/replay-of"
#: On an ExecutionClass: force the circuit (`open`, `closed`, `auto`), or reset it once per new value.
ANNOTATION_CIRCUIT_BREAKER: Final = f"{GROUP}/circuit-breaker"
ANNOTATION_CIRCUIT_BREAKER_RESET: Final = f"{GROUP}/circuit-breaker-reset"
#: On a claimed warm pod: `<Execution uid>/<attempt>` it was claimed for.
ANNOTATION_CLAIMED_BY: Final = f"{GROUP}/claimed-by"


# --- status ----------------------------------------------------------------------------------------------
class Phase(StrEnum):
    """`status.phase` of an Execution; Succeeded, Failed and Cancelled are final."""

    PENDING = "Pending"
    RUNNING = "Running"
    RETRYING = "Retrying"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


TERMINAL_PHASES: Final = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED})
IN_FLIGHT_PHASES: Final = (Phase.PENDING, Phase.RUNNING, Phase.RETRYING)


class ConditionStatus(StrEnum):
    """The `status` of a metav1.Condition."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class ConditionType(StrEnum):
    """The metav1.Condition types of the API's objects."""

    SUCCEEDED = "Succeeded"
    LAUNCHED = "Launched"
    AVAILABLE = "Available"
    READY = "Ready"


class ConditionReason(StrEnum):
    """Reasons this operator writes besides the CamelCase error types (`errors.condition_reason`)."""

    PENDING = "Pending"
    RUNNING = "Running"
    RETRYING = "Retrying"
    SUCCEEDED = "Succeeded"
    CANCELLED = "Cancelled"
    LAUNCHED = "PodCreated"
    CIRCUIT_OPEN = "CircuitOpen"
    CIRCUIT_HALF_OPEN = "CircuitHalfOpen"
    CIRCUIT_CLOSED = "CircuitClosed"
    QUEUED = "Queued"
    INVALID = "Invalid"
    #: An Execution's pod was claimed from a WarmPool.
    WARM_POD_CLAIMED = "WarmPodClaimed"
    #: A WarmPool's Ready condition.
    READY = "Ready"
    FILLING = "Filling"
    IMAGE_PULL_FAILING = "ImagePullFailing"
    QUOTA_EXCEEDED = "QuotaExceeded"
    CLASS_NOT_FOUND = "ClassNotFound"


class Launch(StrEnum):
    """How an attempt's pod was obtained (`status.launch`)."""

    WARM = "warm"  # claimed from a WarmPool; the payload handed over through attach
    COLD = "cold"  # a pod created for the attempt


class EventType(StrEnum):
    """The type of a Kubernetes Event; Warning marks what may need someone's attention."""

    NORMAL = "Normal"
    WARNING = "Warning"


class EventReason(StrEnum):
    """The reasons of the Events the operator posts (`kubectl get events --field-selector reason=...`)."""

    LAUNCHED = "Launched"
    RETRYING = "Retrying"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"
    INVALID = "Invalid"
    DEAD_LETTERED = "DeadLettered"
    REPLAYED = "Replayed"
    REPLAY_REFUSED = "ReplayRefused"
    CIRCUIT_OPEN = "CircuitOpen"
    CIRCUIT_HALF_OPEN = "CircuitHalfOpen"
    CIRCUIT_CLOSED = "CircuitClosed"
