"""JSON for the runner through CPython's C codec (`_json`), without importing `json`.

Every execution starts a fresh interpreter, and `import json` costs it about 15 ms of CPU (the package
compiles regular expressions, which pulls in `re` and `enum`): more than the rest of the runner's own
work. The C scanner and encoder below are the very ones `json.loads`/`json.dumps` use, configured the
same way, so values, floats and error messages come out alike. A decoding error is still a
`json.JSONDecodeError` (built on that rare path only, when `json` is imported after all).
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

_WHITESPACE = " \t\n\r"
_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _ScannerSettings:
    """What `json.JSONDecoder()` hands the C scanner by default."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__


_scan_once = _json.make_scanner(_ScannerSettings())  # type: ignore[arg-type]  # the stub wants a JSONDecoder


def _decode_error(message: str, text: str, position: int) -> ValueError:
    from json import JSONDecodeError

    return JSONDecodeError(message, text, position)


def loads(data: str | bytes) -> object:
    """`json.loads` for a str, or for UTF-8 bytes (lone surrogates allowed, as the harness encodes them)."""
    text = data.decode("utf-8", "surrogatepass") if isinstance(data, bytes) else data
    if text.startswith("\ufeff"):
        raise _decode_error("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan_once(text, start)
    except StopIteration as stop:
        raise _decode_error("Expecting value", text, stop.value) from None
    rest = text[end:]
    if rest.lstrip(_WHITESPACE):
        raise _decode_error("Extra data", text, end + len(rest) - len(rest.lstrip(_WHITESPACE)))
    return value


def _refuse(value: object) -> object:
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


def dumps(
    value: object, *, ensure_ascii: bool = True, allow_nan: bool = True, separators: tuple[str, str] = (", ", ": ")
) -> str:
    """`json.dumps` with the given options (circular references are detected, as there)."""
    escape: Callable[[str], str] = _json.encode_basestring_ascii if ensure_ascii else _json.encode_basestring
    item_separator, key_separator = separators
    encoder = _json.make_encoder({}, _refuse, escape, None, key_separator, item_separator, False, False, allow_nan)
    return "".join(encoder(value, 0))
