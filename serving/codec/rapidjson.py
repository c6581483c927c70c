"""What rapidjson writes, as TF Serving uses it: escaped strings, doubles, PrettyWriter indentation,
and JsonValueToDebugString, the way TF Serving quotes a piece of JSON in an error message."""
from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any


_DEBUG_LIMIT_BYTES = 256


def debug_string(value: Any) -> str:
    """rapidjson's PrettyWriter output (arrays on one line), cut off once 256 bytes are written.

    Like rapidjson, it stops at the first event past the limit and at NaN/Infinity, which its
    writer refuses (after having written the separator before them).
    """
    pieces: list[str] = []
    size = 0
    for piece in _debug_events(value, 0, ""):
        if size >= _DEBUG_LIMIT_BYTES or piece is None:
            break
        pieces.append(piece)
        size += len(piece.encode("utf-8", "surrogatepass"))
    return "".join(pieces)


def _debug_events(value: Any, level: int, prefix: str) -> Iterator[str | None]:
    """One string per rapidjson writer call; None where the writer fails."""
    if isinstance(value, dict):
        yield prefix + "{"
        for i, (key, item) in enumerate(value.items()):
            yield ("\n" if i == 0 else ",\n") + indent(level + 1) + _debug_json_string(key)
            yield from _debug_events(item, level + 1, ": ")
        yield ("\n" + indent(level) if value else "") + "}"
    elif isinstance(value, list):
        yield prefix + "["
        for i, item in enumerate(value):
            yield from _debug_events(item, level + 1, "" if i == 0 else ", ")
        yield "]"
    elif isinstance(value, float) and not math.isfinite(value):
        yield prefix
        yield None
    else:
        yield prefix + _debug_scalar(value)


def indent(level: int) -> str:
    return " " * (4 * level)


def _debug_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return rapidjson_double(value)
    return _debug_json_string(value)


def _debug_json_string(text: str) -> str:
    return json_string(text.encode("utf-8", "surrogateescape")).decode("utf-8", "replace")


def rapidjson_double(value: float) -> str:
    """rapidjson Writer::Double: shortest digits laid out by its dtoa Prettify()."""
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    sign = "-" if value < 0 else ""
    mantissa, _, exponent = repr(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    k = int(exponent or 0) - len(fraction)  # value == digits * 10**k
    stripped = digits.rstrip("0")
    k += len(digits) - len(stripped)
    digits = stripped
    kk = len(digits) + k  # 10**(kk-1) <= value < 10**kk
    if 0 <= k and kk <= 21:
        return f"{sign}{digits}{'0' * k}.0"
    if 0 < kk <= 21:
        return f"{sign}{digits[:kk]}.{digits[kk:]}"
    if -6 < kk <= 0:
        return f"{sign}0.{'0' * -kk}{digits}"
    if len(digits) == 1:
        return f"{sign}{digits}e{kk - 1}"
    return f"{sign}{digits[0]}.{digits[1:]}e{kk - 1}"


def json_type(value: Any) -> str:
    """rapidjson's type names, as TF Serving prints them (JsonTypeString)."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


_JSON_ESCAPES = {
    bytes([c]): {0x08: b"\\b", 0x09: b"\\t", 0x0A: b"\\n", 0x0C: b"\\f", 0x0D: b"\\r"}.get(c, b"\\u%04X" % c)
    for c in range(0x20)
} | {b'"': b'\\"', b"\\": b"\\\\"}


_NEEDS_ESCAPE = re.compile(rb'[\x00-\x1f"\\]')


def json_string(data: bytes) -> bytes:
    """A JSON string as rapidjson's Writer escapes it: only quotes, backslashes and controls."""
    return b'"' + _NEEDS_ESCAPE.sub(lambda m: _JSON_ESCAPES[m.group()], data) + b'"'
