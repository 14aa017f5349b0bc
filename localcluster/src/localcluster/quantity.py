"""Resource quantities (`500m`, `1Gi`, `2e3`) as the API server parses them, for the node and for CEL.

This follows the API server's own parser, which is stricter than the CRD pattern that clients check:
integer exponents only, no surrounding blanks. Values are exact decimals.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_RX_QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")
_SUFFIX = {
    "": Decimal(1), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9, "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15, "E": Decimal(10) ** 18, "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40, "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60,
}  # fmt: skip


def quantity_value(text: str) -> Decimal | None:
    """The exact value of a quantity string in base units (cores, bytes), or None if it is not one."""
    m = _RX_QUANTITY.fullmatch(text) if text else None
    if not m:
        return None
    try:
        num = Decimal(m.group(1))
    except InvalidOperation:
        return None
    suffix = m.group(2) or ""
    if suffix[:1] in ("e", "E"):
        return num * Decimal(10) ** int(suffix[1:])
    return num * _SUFFIX[suffix]


def parse_quantity(value: str | int | float) -> Decimal:
    """Like `quantity_value`, for a pod's resource value (numbers allowed); ValueError if it is not one."""
    if isinstance(value, bool):
        raise ValueError(f"not a quantity: {value!r}")
    if isinstance(value, int | float):
        return Decimal(str(value))
    parsed = quantity_value(value)
    if parsed is None:
        raise ValueError(f"not a quantity: {value!r}")
    return parsed
