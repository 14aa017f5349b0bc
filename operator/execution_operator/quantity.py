"""Kubernetes resource quantities (`500m`, `1Gi`, `2e3`): parse, compare, format.

The operator needs this to apply a class's resource defaults and to refuse requests above the class
maximum; Kubernetes itself only checks the syntax (the CRD pattern below) of a custom resource.
Values are exact (`Decimal`), so `1Gi` and `1073741824` compare equal.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Final

#: The CRD/OpenAPI pattern for a quantity string (the same one controller-gen emits).
QUANTITY_PATTERN: Final = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY_RE: Final = re.compile(QUANTITY_PATTERN)
_NUMBER_RE: Final = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(.*)$")

_BINARY: Final = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL: Final = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}


class QuantityError(ValueError):
    """The text is not a Kubernetes quantity."""


def is_quantity(value: str | int | float) -> bool:
    """True when `value` is accepted by the CRD schema (integer, or a string matching the pattern)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    return bool(_QUANTITY_RE.match(value))


def parse_quantity(value: str | int | float | Decimal) -> Decimal:
    """The exact numeric value of a quantity in base units (cores, bytes)."""
    if isinstance(value, bool):
        raise QuantityError(f"not a quantity: {value!r}")
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int | float):
        return Decimal(str(value))
    text = value.strip()
    if not _QUANTITY_RE.match(text):
        raise QuantityError(f"not a quantity: {value!r}")
    match = _NUMBER_RE.match(text)
    if match is None:  # unreachable after the pattern check; keeps the type checker honest
        raise QuantityError(f"not a quantity: {value!r}")
    number, suffix = match.groups()
    try:
        base = Decimal(number)
        if suffix in _BINARY:
            return base * _BINARY[suffix]
        if suffix in _DECIMAL:
            return base * _DECIMAL[suffix]
        return base * (Decimal(10) ** Decimal(suffix[1:]))  # e/E exponent
    except InvalidOperation as exc:
        raise QuantityError(f"not a quantity: {value!r}") from exc


def compare_quantities(a: str | int | float | Decimal, b: str | int | float | Decimal) -> int:
    """-1, 0 or 1 as `a` is smaller than, equal to or larger than `b`."""
    x, y = parse_quantity(a), parse_quantity(b)
    return (x > y) - (x < y)


def cpu_millicores(value: str | int | float | Decimal) -> int:
    """CPU in millicores, rounded up as the kubelet does (`0.0001` -> 1)."""
    milli = parse_quantity(value) * 1000
    return int(milli.to_integral_value(rounding="ROUND_CEILING"))


def memory_bytes(value: str | int | float | Decimal) -> int:
    """Memory in bytes, rounded up (`1.5k` -> 1500, `0.5` -> 1)."""
    return int(parse_quantity(value).to_integral_value(rounding="ROUND_CEILING"))


def format_cpu(millicores: int) -> str:
    """A canonical CPU string: `2` for whole cores, else `250m`."""
    return str(millicores // 1000) if millicores % 1000 == 0 else f"{millicores}m"


def format_memory(n_bytes: int) -> str:
    """A canonical memory string using the largest exact binary suffix (`134217728` -> `128Mi`)."""
    for suffix, factor in sorted(_BINARY.items(), key=lambda kv: -kv[1]):
        if n_bytes >= factor and n_bytes % factor == 0:
            return f"{n_bytes // factor}{suffix}"
    return str(n_bytes)
