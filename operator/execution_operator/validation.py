"""Rules the CRD schema cannot express, checked against the ExecutionClass before anything launches."""

from __future__ import annotations

from execution_operator.bounds import MAX_INPUT_BYTES, MAX_INPUT_DEPTH, json_depth, json_size
from execution_operator.models import ExecutionClassSpec, ExecutionSpec, ResourceList
from execution_operator.quantity import QuantityError, cpu_millicores, memory_bytes
from execution_operator.sandbox import effective_resources


def validate_execution(spec: ExecutionSpec, cls: ExecutionClassSpec, *, class_name: str) -> str | None:
    """One line saying what to fix, or None when the Execution may run in this class."""
    if spec.timeout_seconds > cls.max_timeout_seconds:
        return (
            f"spec.timeoutSeconds is {spec.timeout_seconds} but ExecutionClass \"{class_name}\" allows at most "
            f"{cls.max_timeout_seconds}: lower it or use another class"
        )
    depth = json_depth(spec.input)
    if depth > MAX_INPUT_DEPTH:
        return (
            f"spec.input is nested more than {MAX_INPUT_DEPTH} levels deep: pass flatter input (deeper data "
            "cannot be encoded and decoded safely)"
        )
    size = json_size(spec.input)
    if spec.input is not None and size > MAX_INPUT_BYTES:
        return (
            f"spec.input is {size} bytes serialized; the limit is {MAX_INPUT_BYTES} (1 MiB): pass a smaller input "
            "or fetch large data from inside the code"
        )
    return _resource_problem(spec, cls, class_name)


def _resource_problem(spec: ExecutionSpec, cls: ExecutionClassSpec, class_name: str) -> str | None:
    """What the pod would get (the request, else the class's default) must be positive and within the max.

    The schema accepts any quantity (`-1`, `0`); a real API server refuses such a pod (a refusal that
    would count against the class), and the local one would run it into `oom` at once.
    """
    caps = cls.resources.max if cls.resources else None
    requested = spec.resources or ResourceList()
    measure = {"cpu": cpu_millicores, "memory": memory_bytes}
    for name, value in effective_resources(spec, cls).items():
        own = getattr(requested, name) is not None
        where = f"spec.resources.{name}" if own else f'ExecutionClass "{class_name}" resources.defaults.{name}'
        cap = getattr(caps, name) if caps else None
        try:
            amount = measure[name](value)
            over = cap is not None and amount > measure[name](cap)
        except QuantityError as exc:
            return f"{where}: {exc}"
        if amount <= 0:
            return f"{where} is {value}: it must be more than zero"
        if over and own:
            return f'spec.resources.{name} {value} is over the maximum {cap} of ExecutionClass "{class_name}"'
        if over:
            return (f"{where} {value} is over the class's own maximum {cap}: fix the class, or set "
                    f"spec.resources.{name}")
    return None
