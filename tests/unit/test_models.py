"""The API models' own behaviour: aliases, parsing of server objects, clamping, conditions, quantities."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from execution_operator import api, bounds, models
from execution_operator.errors import ErrorInfo, ErrorType
from execution_operator.models import (
    TERMINAL_PHASES,
    AttemptRecord,
    Condition,
    ConditionStatus,
    DeadLetter,
    DeadLetterPolicy,
    DeadLetterSpec,
    Execution,
    ExecutionClass,
    ExecutionSpec,
    ExecutionStatus,
    Phase,
    get_condition,
    set_condition,
)
from execution_operator.quantity import (
    QuantityError,
    compare_quantities,
    cpu_millicores,
    format_cpu,
    format_memory,
    is_quantity,
    memory_bytes,
    parse_quantity,
)

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def test_limits_match_the_contract() -> None:
    assert bounds.MAX_CODE_CHARS == 102400
    assert bounds.MAX_INPUT_BYTES == 1048576
    assert bounds.OUTPUT_LIMIT_BYTES == 131072
    assert bounds.STREAM_TAIL_BYTES == 16384
    assert api.API_VERSION == "sandbox.dev/v1alpha1"


# --- aliases and dumping ---------------------------------------------------------------------------


def test_camel_case_on_the_wire_snake_case_in_code() -> None:
    by_alias = ExecutionSpec.model_validate({"code": "1", "executionClassName": "x", "ttlSecondsAfterFinished": 5})
    by_name = ExecutionSpec(code="1", execution_class_name="x", ttl_seconds_after_finished=5)
    assert by_alias == by_name
    dumped = by_name.to_k8s()
    assert dumped["executionClassName"] == "x"
    assert dumped["ttlSecondsAfterFinished"] == 5
    assert dumped["retry"] == {"maxAttempts": 2, "backoffSeconds": 1, "maxBackoffSeconds": 30}
    assert "input" not in dumped
    assert "correlationId" not in dumped


@pytest.mark.parametrize("value", [0, "", [], False, {}, [None], {"a": None, "b": [{"c": None}]}])
def test_falsy_inputs_survive_the_dump(value: Any) -> None:
    assert ExecutionSpec(code="1", input=value).to_k8s()["input"] == value


def test_quantities_are_kept_as_strings() -> None:
    spec = ExecutionSpec.model_validate({"code": "1", "resources": {"cpu": 2, "memory": "256Mi"}})
    assert spec.resources is not None
    assert spec.resources.cpu == "2"
    assert spec.resources.memory == "256Mi"
    for bad in ("two", "1 Gi", True, "1GB"):
        with pytest.raises(ValidationError):
            ExecutionSpec.model_validate({"code": "1", "resources": {"cpu": bad}})


def test_enums() -> None:
    assert frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED}) == TERMINAL_PHASES
    assert ExecutionStatus(phase=Phase.RUNNING).terminal is False
    assert ExecutionStatus(phase=Phase.CANCELLED).terminal is True
    assert DeadLetterPolicy("None") is DeadLetterPolicy.NONE
    assert [s.value for s in models.ExitCodeSource] == ["container", "lastState", "logMarker", "unknown"]


# --- whole objects ---------------------------------------------------------------------------------


def _body() -> dict[str, Any]:
    return {
        "apiVersion": "sandbox.dev/v1alpha1",
        "kind": "Execution",
        "metadata": {"name": "ex1", "namespace": "ns", "uid": "u-1", "generation": 2},
        "spec": {"code": "print(1)", "input": {"a": [1, 2]}, "timeoutSeconds": 5},
        "status": None,
    }


def test_from_body_accepts_a_fresh_object_and_unknown_status_keys() -> None:
    ex = Execution.from_body(_body())
    assert (ex.name, ex.namespace, ex.uid, ex.generation) == ("ex1", "ns", "u-1", 2)
    assert ex.spec.timeout_seconds == 5
    assert ex.spec.input == {"a": [1, 2]}
    assert ex.status == ExecutionStatus()
    body = _body()
    body["status"] = {"phase": "Running", "kopf": {"progress": {}}, "attempt": 1}
    ex = Execution.from_body(body)
    assert ex.status.phase is Phase.RUNNING
    assert ex.status.attempt == 1


def test_to_body_round_trips() -> None:
    ex = Execution.from_body(_body())
    body = ex.to_body()
    assert body["apiVersion"] == "sandbox.dev/v1alpha1"
    assert body["kind"] == "Execution"
    assert Execution.from_body(body) == ex
    klass = ExecutionClass.from_body({"metadata": {"name": "default"}, "spec": {"image": "img:1"}})
    assert klass.namespace is None
    assert klass.to_body()["kind"] == "ExecutionClass"
    assert klass.spec.circuit_breaker.failure_threshold == 5
    assert klass.spec.dead_letter is DeadLetterPolicy.ALL


def test_spec_bounds() -> None:
    ExecutionSpec(code="x" * bounds.MAX_CODE_CHARS)
    with pytest.raises(ValidationError):
        ExecutionSpec(code="x" * (bounds.MAX_CODE_CHARS + 1))
    with pytest.raises(ValidationError):
        ExecutionSpec(code="")
    with pytest.raises(ValidationError):
        ExecutionSpec.model_validate({"code": "1", "timeoutSeconds": 301})
    with pytest.raises(ValidationError, match="backoffSeconds must not exceed"):
        ExecutionSpec.model_validate({"code": "1", "retry": {"backoffSeconds": 40}})


# --- status clamps ---------------------------------------------------------------------------------


def test_attempt_history_keeps_the_newest_records() -> None:
    records = [AttemptRecord(attempt=i) for i in range(1, 31)]
    status = ExecutionStatus(attempts=records)
    assert [r.attempt for r in status.attempts] == list(range(11, 31))


def test_stream_tails_keep_the_end_and_say_so() -> None:
    text = "head" + "x" * bounds.STREAM_TAIL_BYTES + "END"
    status = ExecutionStatus(stdout=text, stderr="short")
    assert status.stdout is not None
    assert len(status.stdout) == bounds.STREAM_TAIL_BYTES
    assert status.stdout.endswith("END")
    assert status.stdout_truncated is True
    assert status.stderr == "short"
    assert status.stderr_truncated is None
    # Already-cut tails from the runner keep the runner's flag.
    assert ExecutionStatus.model_validate({"stdout": "t", "stdoutTruncated": True}).stdout_truncated is True


def test_error_envelope_is_clamped_not_refused() -> None:
    error = ErrorInfo(type=ErrorType.RUNTIME_ERROR, message="m" * 5000, details="d" * 40000 + "LAST", retryable=False)
    status = ExecutionStatus(error=error)
    assert status.error is not None
    assert len(status.error.message) == bounds.MAX_ERROR_MESSAGE_CHARS
    assert status.error.details is not None
    assert status.error.details.endswith("LAST")
    assert len(status.error.details) == bounds.MAX_ERROR_DETAILS_CHARS
    assert status.error.type is ErrorType.RUNTIME_ERROR


def test_status_dump_is_compact() -> None:
    status = ExecutionStatus(phase=Phase.SUCCEEDED, success=True, output=None, exit_code=0)
    assert status.to_k8s() == {"phase": "Succeeded", "success": True, "exitCode": 0, "attempts": [], "conditions": []}


# --- conditions ------------------------------------------------------------------------------------


def _cond(status: ConditionStatus, reason: str = "Running", type_: str = "Succeeded") -> Condition:
    return Condition(type=type_, status=status, reason=reason, message="m", observed_generation=1)


def test_set_condition_appends_with_now() -> None:
    conditions = set_condition([], _cond(ConditionStatus.UNKNOWN), T0)
    assert len(conditions) == 1
    assert conditions[0].last_transition_time == T0


def test_set_condition_keeps_transition_time_when_status_is_unchanged() -> None:
    first = set_condition([], _cond(ConditionStatus.UNKNOWN, "Pending"), T0)
    second = set_condition(first, _cond(ConditionStatus.UNKNOWN, "Running"), T1)
    assert second[0].last_transition_time == T0
    assert second[0].reason == "Running"  # everything else is updated


def test_set_condition_moves_transition_time_when_status_changes() -> None:
    first = set_condition([], _cond(ConditionStatus.UNKNOWN), T0)
    second = set_condition(first, _cond(ConditionStatus.FALSE, "DivisionError"), T1)
    assert second[0].last_transition_time == T1
    assert second[0].status is ConditionStatus.FALSE


def test_set_condition_is_pure_and_keeps_order() -> None:
    launched = _cond(ConditionStatus.TRUE, "PodCreated", "Launched")
    original = set_condition(set_condition([], _cond(ConditionStatus.UNKNOWN), T0), launched, T0)
    snapshot = [c.model_copy() for c in original]
    updated = set_condition(original, _cond(ConditionStatus.TRUE, "Succeeded"), T1)
    assert original == snapshot
    assert [c.type for c in updated] == ["Succeeded", "Launched"]
    assert get_condition(updated, "Succeeded") is not None
    assert get_condition(updated, "Available") is None
    assert get_condition(updated, "Launched") == original[1]


def test_condition_reason_must_be_camel_case_word() -> None:
    with pytest.raises(ValidationError):
        Condition(type="Succeeded", status=ConditionStatus.FALSE, reason="division_error!")
    assert Condition(type="Succeeded", status=ConditionStatus.FALSE, reason="DivisionError").message == ""


# --- dead letters ----------------------------------------------------------------------------------


def test_input_snapshot_replaces_large_inputs_with_a_marker() -> None:
    small = {"rows": list(range(10))}
    assert models.input_snapshot(small) == (small, False)
    big = {"blob": "x" * 1000}
    marker, truncated = models.input_snapshot(big, limit_bytes=100)
    assert truncated is True
    assert marker == {"truncated": True, "originalBytes": bounds.json_size(big)}


def test_json_size_is_compact_utf8() -> None:
    assert bounds.json_size({"a": [1, 2]}) == len('{"a":[1,2]}')
    assert bounds.json_size("é") == 4  # quotes + two bytes


def test_dead_letter_parses_and_clamps() -> None:
    spec: dict[str, Any] = {
        "executionRef": {"name": "ex1", "uid": "u"},
        "executionSpec": {"code": "1/0"},
        "error": {"type": "division_error", "message": "x", "retryable": False},
        "attempts": 25,
        "attemptHistory": [{"attempt": i} for i in range(1, 26)],
        "stdout": "y" * (bounds.STREAM_TAIL_BYTES + 5),
    }
    dead = DeadLetter.from_body({"metadata": {"name": "dl-1"}, "spec": spec})
    assert dead.spec.attempts == 25
    assert [r.attempt for r in dead.spec.attempt_history] == list(range(6, 26))
    assert dead.spec.stdout is not None
    assert len(dead.spec.stdout) == bounds.STREAM_TAIL_BYTES
    assert dead.spec.input_truncated is False
    with pytest.raises(ValidationError):
        DeadLetterSpec.model_validate({**spec, "error": {"type": "not_a_type", "message": "", "retryable": True}})


def test_class_status_reuses_the_breaker_state() -> None:
    now = "2026-01-01T00:00:00Z"
    klass = ExecutionClass.from_body(
        {
            "metadata": {"name": "default"},
            "spec": {"image": "img"},
            "status": {"circuitBreaker": {"state": "open", "failureCount": 5, "openedAt": now}},
        }
    )
    breaker = klass.status.circuit_breaker
    assert isinstance(breaker, models.BreakerState)
    assert breaker.state is models.CircuitState.OPEN
    assert breaker.failure_count == 5
    assert klass.status.to_k8s()["circuitBreaker"]["openedAt"] == now


def test_rfc3339() -> None:
    assert models.rfc3339(datetime(2026, 3, 4, 5, 6, 7, 890, tzinfo=UTC)) == "2026-03-04T05:06:07Z"


# --- quantities ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Decimal("0.5")),
        ("1", Decimal(1)),
        (2, Decimal(2)),
        ("1.5", Decimal("1.5")),
        ("1Ki", Decimal(1024)),
        ("1Gi", Decimal(2**30)),
        ("1G", Decimal(10**9)),
        ("1e3", Decimal(1000)),
        ("2E-3", Decimal("0.002")),
        (".5", Decimal("0.5")),
        ("100n", Decimal("1E-7")),
    ],
)
def test_parse_quantity(text: str | int, value: Decimal) -> None:
    assert parse_quantity(text) == value
    assert is_quantity(text)


@pytest.mark.parametrize("text", ["", "1 Gi", "one", "1GB", "1ki", "--1", "1e", True])
def test_parse_quantity_refuses_garbage(text: Any) -> None:
    assert not is_quantity(text)
    with pytest.raises(QuantityError):
        parse_quantity(text)


def test_compare_and_convert() -> None:
    assert compare_quantities("1Gi", 1073741824) == 0
    assert compare_quantities("500m", "1") == -1
    assert compare_quantities("2", "1500m") == 1
    assert cpu_millicores("250m") == 250
    assert cpu_millicores("0.0001") == 1
    assert cpu_millicores(2) == 2000
    assert memory_bytes("128Mi") == 134217728
    assert memory_bytes("1.5k") == 1500
    assert format_cpu(2000) == "2"
    assert format_cpu(250) == "250m"
    assert format_memory(134217728) == "128Mi"
    assert format_memory(1000) == "1000"
