"""Rules the schema cannot express: they say what to fix."""

from __future__ import annotations

from execution_operator.models import ExecutionClassSpec, ExecutionSpec
from execution_operator.validation import validate_execution

CLS = ExecutionClassSpec.model_validate({
    "image": "img", "maxTimeoutSeconds": 10, "resources": {"max": {"cpu": "1", "memory": "512Mi"}},
})


def check(**spec: object) -> str | None:
    return validate_execution(ExecutionSpec.model_validate({"code": "x", "timeoutSeconds": 5, **spec}), CLS,
                              class_name="small")


def test_within_limits() -> None:
    assert check(timeoutSeconds=10, resources={"cpu": "500m", "memory": "512Mi"}) is None


def test_timeout_over_class_max() -> None:
    message = check(timeoutSeconds=11)
    assert message
    assert "allows at most 10" in message
    assert "small" in message


def test_input_over_one_mebibyte() -> None:
    message = check(input="x" * (1024 * 1024))
    assert message
    assert "1 MiB" in message


def test_resources_over_class_max() -> None:
    assert "cpu" in (check(resources={"cpu": "1500m"}) or "")
    assert "memory" in (check(resources={"memory": "1Gi"}) or "")
