"""What a DeadLetter and its replays are made of: names, the policy decision, size bounds, the bodies.

Pure functions from plain dicts (as the API server returns them) to the objects `deadletters` creates:
the DeadLetter of a failed Execution (`build_dead_letter`, shrunk to fit what etcd and the API server
accept) and the Execution a replay creates (`replay_execution`). Names are functions of the Execution's
uid and the replay's number, which is what makes every create in `deadletters` safe to repeat.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from execution_operator.api import (
    ANNOTATION_REPLAY_OF,
    API_VERSION,
    LABEL_CORRELATION_ID,
    LABEL_ERROR_TYPE,
    LABEL_EXECUTION,
    LABEL_EXECUTION_CLASS,
    LABEL_MANAGED_BY,
    LABEL_REPLAY_OF,
    MANAGED_BY,
    Kind,
    Phase,
)
from execution_operator.bounds import MAX_CORRELATION_ID_CHARS, STREAM_TAIL_BYTES, json_size
from execution_operator.errors import INFRASTRUCTURE_TYPES, ErrorInfo, ErrorType
from execution_operator.models import DeadLetterPolicy, DeadLetterSpec, input_snapshot
from execution_operator.sandbox import dns_prefix, is_label_safe, label_value, short_hash

#: Bound on a DeadLetter as the API server stores it (Go JSON: UTF-8, `<>&` escaped as \\u003c).
#: etcd's default request limit is 1.5 MiB; staying under 900 KiB leaves room for managedFields and
#: `status.replays`.
MAX_STORED_BYTES: Final = 900 * 1024
#: Bound on the create request as our client sends it (ASCII JSON: non-ASCII as \\uXXXX escapes); the
#: API server refuses request bodies over 3 MiB.
MAX_REQUEST_BYTES: Final = 2560 * 1024

_NAME_PREFIX_CHARS: Final = 40
_MAX_NAME_CHARS: Final = 63
_REPLAY_SUFFIX = re.compile(r"-r(\d+)$")


class ReplayRefused(Exception):
    """A replay that cannot be made as asked (the snapshot's input was dropped and the original is gone)."""


def dead_letter_name(execution_name: str, execution_uid: str) -> str:
    """`<execution name prefix>-dl-<hash of uid>`: one name per Execution uid, label-safe, <= 53 chars.

    The uid (not the name) makes it unique: a re-created Execution of the same name gets its own.
    Kept within 63 characters so it can also be a label value (`sandbox.dev/replay-of`).
    """
    return f"{dns_prefix(execution_name, _NAME_PREFIX_CHARS)}-dl-{short_hash(execution_uid, length=10)}"


def replay_name(dead_letter: str, replay_number: int) -> str:
    """`<dead letter name>-r<n>`, shortened with a hash when it would pass 63 characters."""
    suffix = f"-r{replay_number}"
    if len(dead_letter) + len(suffix) <= _MAX_NAME_CHARS:
        return dead_letter + suffix
    keep = _MAX_NAME_CHARS - len(suffix) - 9
    return f"{dns_prefix(dead_letter, keep)}-{short_hash(dead_letter, length=8)}{suffix}"


def replay_correlation_id(original: str, replay_number: int) -> str:
    """`<original>-replay-<n>`; the original is cut (not the suffix) to stay within 128 characters."""
    suffix = f"-replay-{replay_number}"
    return original[: MAX_CORRELATION_ID_CHARS - len(suffix)] + suffix


def wants_dead_letter(policy: DeadLetterPolicy | str, phase: str, error_type: ErrorType | str | None) -> bool:
    """Whether a terminal Execution gets a DeadLetter under the class's policy.

    Only `Failed` counts: a cancellation is a request that was honoured, not a failure.
    """
    if phase != Phase.FAILED or error_type == ErrorType.CANCELLED:
        return False
    match DeadLetterPolicy(policy):
        case DeadLetterPolicy.ALL:
            return True
        case DeadLetterPolicy.INFRASTRUCTURE:
            try:
                return error_type is not None and ErrorType(error_type) in INFRASTRUCTURE_TYPES
            except ValueError:
                return False
        case _:
            return False


def stored_size(obj: Any) -> int:
    """Bytes of `obj` as the API server stores it: UTF-8 JSON with Go's HTML-safe escapes."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    html = text.count("<") + text.count(">") + text.count("&")
    separators = text.count("\u2028") + text.count("\u2029")
    return len(text.encode()) + 5 * html + 3 * separators


def request_size(obj: Any) -> int:
    """Bytes of `obj` as `KubeClient` sends it (ASCII JSON)."""
    return len(json.dumps(obj, separators=(",", ":")))


def _fits(obj: Any) -> bool:
    return stored_size(obj) <= MAX_STORED_BYTES and request_size(obj) <= MAX_REQUEST_BYTES


def _tail(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    return text[-limit:] if limit > 0 and len(text) > limit else (text if limit > 0 else "")


_ERROR_KEYS: Final = ("type", "message", "details", "retryable", "meta")


def _error_of(status: Mapping[str, Any]) -> dict[str, Any]:
    raw = status.get("error")
    if isinstance(raw, Mapping) and raw.get("type"):
        return {k: raw[k] for k in _ERROR_KEYS if k in raw}
    fallback = ErrorInfo.of(ErrorType.INTERNAL_ERROR, "the Execution failed without an error record")
    return fallback.model_dump(mode="json", exclude_none=True)


def build_dead_letter(execution: Mapping[str, Any], class_name: str, now: str) -> dict[str, Any]:
    """The DeadLetter for a failed Execution (its raw body with a terminal status), ready to create.

    Kept: the spec (input replaced by a `{truncated, originalBytes}` marker when over
    `DEAD_LETTER_MAX_INPUT_BYTES`), the error envelope, the attempt history, exit code, pod name,
    correlation id and the stream tails. Not kept: the output (a failed Execution has none worth
    keeping). If the whole object would still pass `MAX_STORED_BYTES`, the input is dropped first and
    then the stdout/stderr/details tails are shortened; the code is always kept, so replay stays possible.
    """
    meta = execution.get("metadata") or {}
    spec = dict(execution.get("spec") or {})
    status = execution.get("status") or {}
    name = str(meta["name"])
    uid = str(meta.get("uid") or "")
    namespace = meta.get("namespace")

    stored_input, input_truncated = input_snapshot(spec.get("input"))
    if input_truncated or spec.get("input") is not None:
        spec["input"] = stored_input
    history = list(status.get("attempts") or [])
    attempts = int(status.get("attempt") or len(history) or 0)
    correlation = status.get("correlationId") or spec.get("correlationId")
    model = DeadLetterSpec.model_validate(
        {
            "executionRef": {"name": name, "uid": uid or None},
            "executionSpec": spec,
            "error": _error_of(status),
            "attempts": attempts,
            "attemptHistory": history,
            "exitCode": status.get("exitCode"),
            "exitCodeSource": status.get("exitCodeSource"),
            "stdout": status.get("stdout"),
            "stderr": status.get("stderr"),
            "podName": status.get("podName"),
            "failedAt": status.get("completionTime") or now,
            "correlationId": correlation,
            "executionClassName": class_name,
            "inputTruncated": input_truncated,
        }
    )
    dl_spec = model.to_k8s()

    labels = {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_ERROR_TYPE: str(dl_spec["error"]["type"]),
        LABEL_EXECUTION_CLASS: label_value(class_name),
        LABEL_EXECUTION: label_value(name),
    }
    if correlation and is_label_safe(str(correlation)):
        labels[LABEL_CORRELATION_ID] = str(correlation)
    metadata: dict[str, Any] = {"name": dead_letter_name(name, uid or name), "labels": labels}
    if namespace:
        metadata["namespace"] = namespace
    body = {"apiVersion": API_VERSION, "kind": Kind.DEAD_LETTER, "metadata": metadata, "spec": dl_spec}
    return _shrink_to_fit(body)


def _shrink_to_fit(body: dict[str, Any]) -> dict[str, Any]:
    """Drop the input, then halve the stream and details tails, until the object fits its bounds."""
    if _fits(body):
        return body
    spec = body["spec"]
    if "input" in spec["executionSpec"] and not spec.get("inputTruncated"):
        spec["executionSpec"]["input"] = {
            "truncated": True,
            "originalBytes": json_size(spec["executionSpec"]["input"]),
        }
        spec["inputTruncated"] = True
        if _fits(body):
            return body
    limit = STREAM_TAIL_BYTES
    originals = {k: spec.get(k) for k in ("stdout", "stderr")}
    details = spec["error"].get("details")
    while not _fits(body) and limit > 0:
        limit //= 2
        for key, text in originals.items():
            if text is not None:
                spec[key] = _tail(text, limit)
        if details is not None:
            spec["error"]["details"] = _tail(details, limit)
    return body


def next_replay_number(replays: Sequence[Mapping[str, Any]]) -> int:
    """One past the highest replay so far; counts on past `status.replays`' cap of 50 entries."""
    numbers = [len(replays)]
    for entry in replays:
        found = _REPLAY_SUFFIX.search(str(entry.get("name", "")))
        if found:
            numbers.append(int(found.group(1)))
    return max(numbers) + 1


def replay_execution(dead_letter: Mapping[str, Any], replay_number: int, original_input: Any | None) -> dict[str, Any]:
    """The Execution that replay `replay_number` of this DeadLetter creates.

    `original_input` is used only when the snapshot's input was dropped for size; then it is required.
    """
    meta = dead_letter.get("metadata") or {}
    dl_name = str(meta["name"])
    spec = dead_letter.get("spec") or {}
    ex_spec = dict(spec.get("executionSpec") or {})
    if spec.get("inputTruncated"):
        if original_input is None:
            raise ReplayRefused(f"the input of {dl_name} was too large to keep and no original is available")
        ex_spec["input"] = original_input
    ex_spec["cancel"] = False
    original_id = str(
        spec.get("correlationId")
        or ex_spec.get("correlationId")
        or (spec.get("executionRef") or {}).get("name")
        or dl_name
    )
    ex_spec["correlationId"] = replay_correlation_id(original_id, replay_number)
    metadata: dict[str, Any] = {
        "name": replay_name(dl_name, replay_number),
        "labels": {LABEL_REPLAY_OF: label_value(dl_name)},
        "annotations": {ANNOTATION_REPLAY_OF: dl_name},
    }
    if meta.get("namespace"):
        metadata["namespace"] = meta["namespace"]
    return {"apiVersion": API_VERSION, "kind": Kind.EXECUTION, "metadata": metadata, "spec": ex_spec}
