"""The contract's bounds: how large or deep each field of the API may be, and the measures behind them.

The CRDs in `crds/` state the same numbers where the API server can check them (`tests/unit/test_crds.py`
proves they agree); the rest (input size and depth) the operator checks itself.
"""

from __future__ import annotations

import json
from typing import Any, Final

#: `spec.code` length in characters.
MAX_CODE_CHARS: Final = 102400
#: `spec.input` serialised as compact JSON (checked by the operator: the schema cannot measure it).
MAX_INPUT_BYTES: Final = 1048576
#: `spec.input` nesting depth (checked by the operator: deeper input cannot be encoded or decoded safely).
MAX_INPUT_DEPTH: Final = 100
#: `status.output` serialised as compact JSON; larger is `output_too_large`.
OUTPUT_LIMIT_BYTES: Final = 131072
#: The tail kept of each of stdout and stderr.
STREAM_TAIL_BYTES: Final = 16384
#: `status.attempts` keeps the last this many records.
MAX_ATTEMPT_RECORDS: Final = 20
#: `status.conditions` holds at most this many types.
MAX_CONDITIONS: Final = 16
#: `status.error.message` is one line of at most this many characters.
MAX_ERROR_MESSAGE_CHARS: Final = 1024
#: `status.error.details` keeps the tail of at most this many characters.
MAX_ERROR_DETAILS_CHARS: Final = 16384
#: `DeadLetter.spec.executionSpec.input` larger than this (compact JSON) is replaced by a marker.
DEAD_LETTER_MAX_INPUT_BYTES: Final = 262144
#: `DeadLetter.status.replays` keeps the last this many entries.
MAX_REPLAY_RECORDS: Final = 50

MAX_TIMEOUT_SECONDS: Final = 300
#: A dotted Python module name (ExecutionClass.spec.warmImports).
MODULE_NAME_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
#: Most ready pods a WarmPool may ask for.
MAX_WARM_POOL_REPLICAS: Final = 100
#: metav1.Condition's reason pattern.
CONDITION_REASON_PATTERN: Final = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
MAX_CORRELATION_ID_CHARS: Final = 128


def json_depth(value: Any, stop_at: int = MAX_INPUT_DEPTH + 1) -> int:
    """How deeply `value` nests arrays and objects (a scalar is 0), counted without recursion up to `stop_at`."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            if deepest >= stop_at:
                return deepest
            stack.extend((child, depth) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def json_size(value: Any) -> int:
    """Bytes of `value` as compact UTF-8 JSON: the measure behind the input/output bounds."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
