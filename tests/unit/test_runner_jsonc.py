"""The runner's JSON codec agrees with `json` (it drives the same C scanner and encoder without the package)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from execution_operator.runner import jsonc

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)
OPTIONS: list[dict[str, Any]] = [
    {},
    {"ensure_ascii": False},
    {"separators": (",", ":"), "ensure_ascii": False},
    {"allow_nan": False},
]


def _outcome(call: Any) -> tuple[str, Any]:
    try:
        return "ok", call()
    except Exception as exc:  # noqa: BLE001 - the comparison is of what each raises, whatever it is
        return type(exc).__name__, str(exc)


@settings(max_examples=300, deadline=None)
@given(values)
def test_dumps_matches_json(value: Any) -> None:
    for options in OPTIONS:
        ours = _outcome(lambda options=options: jsonc.dumps(value, **options))
        assert ours == _outcome(lambda options=options: json.dumps(value, **options))


@settings(max_examples=300, deadline=None)
@given(values, st.sampled_from(["", " ", "\n\t ", "\r\n"]))
def test_loads_matches_json(value: Any, padding: str) -> None:
    text = padding + json.dumps(value) + padding
    decoded = jsonc.loads(text)
    assert json.dumps(decoded) == json.dumps(json.loads(text))
    assert json.dumps(jsonc.loads(text.encode("utf-8", "surrogatepass"))) == json.dumps(decoded)


@pytest.mark.parametrize(
    "text", ["", "  ", "[1,", "1 2", '{"a" 1}', "\ufeff1", "nul", '"\x01"', "[1] x", '{"a": 1}}', "0x10"]
)
def test_decoding_errors_are_json_decode_errors_with_the_same_message(text: str) -> None:
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    with pytest.raises(json.JSONDecodeError) as got:
        jsonc.loads(text)
    assert (str(got.value), got.value.pos) == (str(expected.value), expected.value.pos)


def test_special_values() -> None:
    assert math.isnan(jsonc.loads("NaN"))  # type: ignore[arg-type]
    assert jsonc.loads("-Infinity") == float("-inf")
    keys = {2: "int", None: "null", False: "bool", 2.5: "float"}
    assert jsonc.dumps(keys) == json.dumps(keys) == '{"2": "int", "null": "null", "false": "bool", "2.5": "float"}'
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular reference detected"):
        jsonc.dumps(loop)
    with pytest.raises(TypeError, match="Object of type set is not JSON serializable"):
        jsonc.dumps({1, 2})
