"""Floats as TF Serving writes them (WriteDecimal).

TF Serving writes a float with absl::StrCat (printf "%g": 6 significant digits) when that text
parses back to the same value, else with "%.9g" (float) / "%.17g" (double), and appends ".0"
when the text has neither "." nor "e". `float32_text` computes this with array arithmetic;
values it cannot decide with certainty (a decimal digit or the round trip too close to call)
go through the exact per-value path, `float32_token`.
"""
from __future__ import annotations

import math
import struct
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import orjson


def splice(text: bytes, tokens: list[bytes]) -> bytes:
    """Replace the nulls of orjson's `text`, in order, by `tokens`."""
    pieces = text.split(b"null")
    merged = [b""] * (2 * len(pieces) - 1)
    merged[0::2], merged[1::2] = pieces, tokens
    return b"".join(merged)


def per_value_text(array: np.ndarray, token: Callable[[float], bytes]) -> bytes:
    """`array` as compact JSON with each value written by `token`."""
    tokens = [token(v) for v in array.reshape(-1).tolist()]
    return splice(orjson.dumps(np.full(array.shape, np.nan), option=orjson.OPT_SERIALIZE_NUMPY), tokens)


def float64_token(value: float) -> bytes:
    """Exact: Python's float() rounds correctly, like absl::SimpleAtod."""
    if not math.isfinite(value):
        return _non_finite_token(value)
    text = "%.6g" % value
    if float(text) != value:
        text = "%.17g" % value
    return _with_point(text)


def float32_token(value: float) -> bytes:
    """Exact but slow: `value` is a float32 as a Python float."""
    if not math.isfinite(value):
        return _non_finite_token(value)
    text = "%.6g" % value
    if not _parses_to_float32(text, value):
        text = "%.9g" % value
    return _with_point(text)


def _non_finite_token(value: float) -> bytes:
    if math.isnan(value):
        return b"NaN"
    return b"Infinity" if value > 0 else b"-Infinity"


def _with_point(text: str) -> bytes:
    """TF Serving marks whole numbers as decimals: "3" -> "3.0", but "9e+06" stays."""
    if "." not in text and "e" not in text:
        text += ".0"
    return text.encode()


_THREE_FLOAT32 = struct.Struct("3f")  # packing rounds as C's cast does: to nearest, ties to even


def _parses_to_float32(text: str, value: float) -> bool:
    """Whether decimal `text` rounds to float32 `value` (correctly, ties to even, like absl::SimpleAtof).

    Rounding is monotonic and the decimal lies between the doubles either side of its nearest double,
    so when those three round to the same float32, so does the decimal; else (near a float32 tie, or
    at the top of its range) the exact comparison decides. The three are rounded in one pack (three
    packs cost a 10-value response ~2 us more).
    """
    double = float(text)
    try:
        below, single, above = _THREE_FLOAT32.unpack(_THREE_FLOAT32.pack(
            math.nextafter(double, -math.inf), double, math.nextafter(double, math.inf)))
        if below == single == above:
            return single == value
    except OverflowError:
        pass
    return _parses_to_float32_exactly(text, value)


def _parses_to_float32_exactly(text: str, value: float) -> bool:
    decimal, magnitude = abs(Fraction(text)), abs(Fraction(value))
    single = np.float32(abs(value))
    below = Fraction(float(np.nextafter(single, np.float32(0))))
    with np.errstate(over="ignore"):
        above = np.nextafter(single, np.float32(np.inf))
    above = 2 * magnitude - below if np.isinf(above) else Fraction(float(above))
    low, high = (magnitude + below) / 2, (magnitude + above) / 2
    if low < decimal < high:
        return True
    return decimal in (low, high) and int(single.view(np.uint32)) % 2 == 0


_POWER_RANGE = 60  # float32 values need 10**k for |k| <= 8 + 45


def _power_tables() -> tuple[np.ndarray, np.ndarray]:
    """(10**k or 1, 10**-k or 1) for k in +-_POWER_RANGE: scaling multiplies or divides, never both."""
    exponents = range(-_POWER_RANGE, _POWER_RANGE + 1)
    multiply = np.array([float(f"1e{k}") if k > 0 else 1.0 for k in exponents])
    divide = np.array([float(f"1e{-k}") if k < 0 else 1.0 for k in exponents])
    return multiply, divide


_MULTIPLY, _DIVIDE = _power_tables()


_EXPONENTS = np.array([b"e%+03d" % x for x in range(-45, 39)])  # float32: 1e-45 .. 3.4e+38


def _scale(magnitudes: np.ndarray, exponents: np.ndarray) -> np.ndarray:
    """magnitudes * 10**exponents, within 2 ulps (1/2 ulp when 10**|exponent| is exact)."""
    index = exponents + _POWER_RANGE
    return magnitudes * _MULTIPLY[index] / _DIVIDE[index]


_PER_VALUE_BELOW = 48  # values: up to here one at a time (~2 us each) beats the vectorised path (~130 us)


def float32_text(values: np.ndarray) -> bytes:
    """`_numbers_text` for float32: for more than a few values numpy and orjson do the work for almost every value.

    `_decimal_digits` picks each value's digits and decimal exponent. Values "%g" writes without
    exponent (1e-4 <= |x| < 1e6, or < 1e9 when 9 digits are needed) are exactly what orjson
    prints for the double nearest those digits; the others get "d.ddde±XX" built from digit
    characters.
    """
    if values.size <= _PER_VALUE_BELOW:
        return per_value_text(values, float32_token)
    single = values.reshape(-1)
    sure, digits, exp10, plain = _decimal_digits(single)
    with np.errstate(invalid="ignore"):
        decimal = np.copysign(digits / _DIVIDE[_POWER_RANGE + exp10 - 8], single)  # exact 10**(8-exp10)
    decimal = np.where(plain, decimal, np.nan).reshape(values.shape)  # NaN is written as null
    others = np.flatnonzero(~plain)
    tokens = np.zeros(others.size, "S16")
    scientific = sure[others]
    rows = others[scientific]
    tokens[scientific] = _scientific_tokens(digits[rows], exp10[rows], np.signbit(single[rows]))
    value = single[others]
    negative = np.signbit(value)
    tokens[(value == 0) & ~negative] = b"0.0"
    tokens[(value == 0) & negative] = b"-0.0"
    tokens[np.isnan(value)] = b"NaN"
    tokens[value == np.inf] = b"Infinity"
    tokens[value == -np.inf] = b"-Infinity"
    other_tokens = tokens.tolist()
    for i in np.flatnonzero(~scientific & np.isfinite(value) & (value != 0)).tolist():
        other_tokens[i] = float32_token(float(value[i]))
    return splice(orjson.dumps(decimal, option=orjson.OPT_SERIALIZE_NUMPY), other_tokens)


def _scientific_tokens(digits: np.ndarray, exp10: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """"d.ddde±XX" ("de±XX" for one digit) from 9-digit integers and decimal exponents."""
    if not digits.size:
        return np.zeros(0, "S16")
    chars = np.frombuffer(orjson.dumps(digits, option=orjson.OPT_SERIALIZE_NUMPY), np.uint8)
    chars = chars[1:].reshape(-1, 10)[:, :9]  # "[123456789,234567890,...]": 9 digits and a comma each
    mantissa = np.zeros((digits.size, 10), np.uint8)  # digit, point, 8 digits
    mantissa[:, 0] = chars[:, 0]
    trailing = np.ones(digits.size, bool)
    for column in range(8, 0, -1):  # blank trailing zeros; the point goes if no digit follows it
        trailing &= chars[:, column] == ord("0")
        mantissa[:, column + 1] = np.where(trailing, 0, chars[:, column])
    mantissa[:, 1] = np.where(trailing, 0, ord("."))
    text = np.strings.add(mantissa.view("S10").reshape(-1), _EXPONENTS[exp10 + 45]).astype("S16")
    text[negative] = np.strings.add(b"-", text[negative])
    return text


_CHUNK = 8192  # values per pass: the temporaries stay in cache (and under malloc's mmap threshold)


def _decimal_digits(single: np.ndarray) -> tuple[np.ndarray, ...]:
    """`_chunk_digits` over the array a cache-sized chunk at a time: measured twice as fast as all at once."""
    chunks = [_chunk_digits(single[i:i + _CHUNK]) for i in range(0, max(single.size, 1), _CHUNK)]
    return tuple(np.concatenate(parts) for parts in zip(*chunks))


def _chunk_digits(single: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per float32: (sure, 9-digit integer, decimal exponent of its first digit, plain).

    The digits are the 6-digit rounding padded with zeros when it parses back to the float,
    else the 9-digit rounding. `sure` is False for zero/NaN/inf and for values this double
    arithmetic cannot decide: within its error of a rounding tie or of the float's rounding
    interval. `plain` marks values "%g" writes without an exponent.
    """
    with np.errstate(all="ignore"):  # zero, NaN and inf are computed on, then masked out
        x = single.astype(np.float64)
        magnitude = np.abs(x)
        exponent = np.floor(np.log10(magnitude))
        regular = np.isfinite(exponent)
        magnitude = np.where(regular, magnitude, 1.0)
        exponent = np.where(regular, exponent, 0.0).astype(np.int64)
        nine = _scale(magnitude, 8 - exponent)  # log10 can be one off at powers of ten
        exponent += (nine >= 1e9).astype(np.int64) - (nine < 1e8)
        nine, six = _scale(magnitude, 8 - exponent), _scale(magnitude, 5 - exponent)
        digits9, digits6 = np.rint(nine), np.rint(six)
        unsure = (np.abs(nine - np.floor(nine) - 0.5) < 5e-7) | (np.abs(six - np.floor(six) - 0.5) < 1e-9)
        exponent9 = exponent + (digits9 == 1e9)
        digits9 = np.where(digits9 == 1e9, 1e8, digits9)
        exponent6 = exponent + (digits6 == 1e6)
        digits6 = np.where(digits6 == 1e6, 1e5, digits6)
        # The 6 digits parse back to the float iff they fall inside its rounding interval,
        # whose bounds (halfway to the neighbouring floats) are exact doubles.
        decimal6 = _scale(digits6, exponent6 - 5)
        below = np.nextafter(np.abs(single), np.float32(0)).astype(np.float64)
        above = np.nextafter(np.abs(single), np.float32(np.inf)).astype(np.float64)
        above = np.where(np.isinf(above), 2 * magnitude - below, above)  # past 3.4e38: the gap below
        low, high = (magnitude + below) / 2, (magnitude + above) / 2
        tolerance = decimal6 * 1e-15
        unsure |= (np.abs(decimal6 - low) <= tolerance) | (np.abs(decimal6 - high) <= tolerance)
        six_digits = (low < decimal6) & (decimal6 < high)
    sure = regular & ~unsure
    exp10 = np.where(six_digits, exponent6, exponent9)
    digits = np.where(sure, np.where(six_digits, digits6 * 1000, digits9), 1e8).astype(np.int64)
    plain = sure & (exp10 >= -4) & (exp10 < np.where(six_digits, 6, 9))
    return sure, digits, exp10, plain
