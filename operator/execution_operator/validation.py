"""Rules the CRD schema cannot express, checked against the ExecutionClass before anything launches."""

from __future__ import annotations

from execution_operator.models import MAX_INPUT_BYTES, ExecutionClassSpec, ExecutionSpec, json_size
from execution_operator.quantity import QuantityError, cpu_millicores, memory_bytes


def validate_execution(spec: ExecutionSpec, cls: ExecutionClassSpec, *, class_name: str) -> str | None:
    """One line saying what to fix, or None when the Execution may run in this class."""
    if spec.timeout_seconds > cls.max_timeout_seconds:
        return (
            f"spec.timeoutSeconds is {spec.timeout_seconds} but ExecutionClass \"{class_name}\" allows at most "
            f"{cls.max_timeout_seconds}: lower it or use another class"
        )
    size = json_size(spec.input)
    if spec.input is not None and size > MAX_INPUT_BYTES:
        return (
            f"spec.input is {size} bytes serialized; the limit is {MAX_INPUT_BYTES} (1 MiB): pass a smaller input "
            "or fetch large data from inside the code"
        )
    caps = cls.resources.max if cls.resources else None
    requested = spec.resources
    if caps and requested:
        try:
            if requested.cpu and caps.cpu and cpu_millicores(requested.cpu) > cpu_millicores(caps.cpu):
                return (
                    f"spec.resources.cpu {requested.cpu} is over the maximum {caps.cpu} of ExecutionClass "
                    f"\"{class_name}\""
                )
            if requested.memory and caps.memory and memory_bytes(requested.memory) > memory_bytes(caps.memory):
                return (
                    f"spec.resources.memory {requested.memory} is over the maximum {caps.memory} of "
                    f"ExecutionClass \"{class_name}\""
                )
        except QuantityError as exc:
            return f"spec.resources: {exc}"
    return None
