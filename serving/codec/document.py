"""The request body as a JSON document, parsed the way TF Serving's rapidjson is set up
(util/json_tensor.cc ParseJson), with rapidjson's own messages for malformed JSON.

orjson handles the usual strict, UTF-8, single-document body; anything it refuses is parsed
again leniently, because TF Serving accepts NaN/Infinity, ignores what follows the document
(kParseStopWhenDoneFlag) and does not validate UTF-8; a body nested deeper than Python's json goes
is parsed iteratively (deep.py), as rapidjson parses it, to any depth.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from serving.codec import deep, slices
from serving.codec.dtypes import INT64_MIN, UINT64_MAX
from serving.codec.rapidjson import debug_string
from serving.errors import CodecError


_UTF8_BOM = b"\xef\xbb\xbf"  # rapidjson's UTF-8 input stream skips it
SLICED_BYTES = 1 << 20  # bodies from this size are decoded in slices (and, by serving.core, off the event loop)


_JSON_WHITESPACE = " \t\n\r"


class _NumberTooBig(ValueError):
    def __init__(self, literal: str):
        super().__init__(literal)
        self.literal = literal


def _parse_int(literal: str) -> int | float:
    """rapidjson keeps integers in [int64 min, uint64 max]; any other integer becomes a double."""
    if len(literal.lstrip("-")) > 20:  # beyond uint64 (and int() refuses more than 4,300 digits)
        return _parse_float(literal)
    value = int(literal)
    return value if INT64_MIN <= value <= UINT64_MAX else _parse_float(literal)


def _parse_float(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):
        raise _NumberTooBig(literal)
    return value


_LENIENT_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float)


# Python's json messages -> rapidjson's GetParseError_En() text for the same mistake.
_PARSE_ERRORS = (
    ("Expecting value", "Invalid value."),
    ("Expecting property name enclosed in double quotes", "Missing a name for object member."),
    ("Expecting ':' delimiter", "Missing a colon after a name of object member."),
    ("Unterminated string starting at", "Missing a closing quotation mark in string."),
    ("Invalid control character", "Invalid encoding in string."),
    ("Invalid \\uXXXX escape", "Incorrect hex digit after \\u escape in string."),
    ("Invalid \\escape", "Invalid escape character in string."),
)


class Document(dict):
    """A decoded request body; remembers whether the body has a JSON true/false anywhere, so the
    fast numeric path can skip looking for booleans (the only non-number numpy would accept)."""

    may_hold_booleans = True


def decode_json(body: bytes, parsed: Any = None) -> Document:
    """The request document, parsed with TF Serving's rapidjson settings (util/json_tensor.cc ParseJson).

    orjson handles the usual strict, UTF-8, single-document body; anything it refuses is parsed
    again leniently, because TF Serving accepts NaN/Infinity, ignores what follows the document
    (kParseStopWhenDoneFlag) and does not validate UTF-8. A large body is parsed by simdjson instead, or taken
    from `parsed`, simdjson's parse of it that a caller made already.
    """
    if not body:
        raise CodecError("JSON Parse error: The document is empty")
    if body.startswith(_UTF8_BOM):
        body = body[len(_UTF8_BOM):]
    document = _parse(body, parsed)
    if not isinstance(document, dict):
        raise CodecError(f"JSON Value: {debug_string(document)} Is not object")
    document = Document(document)
    document.may_hold_booleans = b"true" in body or b"false" in body
    return document


def _parse(body: bytes, parsed: Any) -> Any:
    """A large body is parsed by simdjson (or was, `parsed`, by the caller's fast path) and converted in slices
    (slices.py: another thread gets the GIL between them), the rest by orjson in one call; what either refuses is
    parsed leniently."""
    if len(body) >= SLICED_BYTES:
        try:
            return slices.to_python(parsed) if parsed is not None else slices.parse(body)
        except (ValueError, RuntimeError):  # orjson's and the lenient parser's turn to decide
            pass
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return _decode_leniently(body)


def _decode_leniently(body: bytes) -> Any:
    text = body.decode("utf-8", "surrogateescape")  # invalid bytes survive as U+DC80..U+DCFF
    start = len(text) - len(text.lstrip(_JSON_WHITESPACE))
    if start == len(text):
        raise CodecError(f"JSON Parse error: The document is empty. at offset: {len(body)}")
    try:
        try:
            document, _ = _LENIENT_DECODER.raw_decode(text, start)
        except RecursionError:  # rapidjson parses iteratively, to any depth; Python's json recurses
            document = deep.parse(text, start, _LENIENT_DECODER.scan_once)
    except deep.ParseError as e:
        raise CodecError(f"JSON Parse error: {e.message} at offset: {_byte_offset(text, e.pos)}") from None
    except _NumberTooBig as e:
        offset = _byte_offset(text, text.find(e.literal, start))
        raise CodecError(f"JSON Parse error: Number too big to be stored in double. at offset: {offset}") from None
    except json.JSONDecodeError as e:
        raise CodecError(
            f"JSON Parse error: {_rapidjson_message(e, text)} at offset: {_byte_offset(text, e.pos)}"
        ) from None
    for escape in _ESCAPE.finditer(text):  # Python accepts "\ud800" alone, rapidjson does not
        if escape.group(1):
            offset = _byte_offset(text, escape.start())
            raise CodecError(f"JSON Parse error: The surrogate pair in string is invalid. at offset: {offset}")
    return document


# One backslash escape: a surrogate pair, a lone surrogate (group 1), or anything else.
_ESCAPE = re.compile(
    r"\\(?:u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|(u[dD][89a-fA-F][0-9a-fA-F]{2})|.)", re.S
)


def _byte_offset(text: str, position: int) -> int:
    return len(text[:position].encode("utf-8", "surrogateescape"))


def _rapidjson_message(error: json.JSONDecodeError, text: str) -> str:
    if error.msg.startswith("Expecting ',' delimiter"):
        return deep.missing_comma(deep.innermost_container(text[: error.pos]))
    for python_message, rapidjson_message in _PARSE_ERRORS:
        if error.msg.startswith(python_message):
            return rapidjson_message
    return error.msg


def signature_name(document: dict) -> str:
    """The request's "signature_name", "" when absent (meaning the default signature)."""
    name = document.get("signature_name", "")
    if not isinstance(name, str):
        raise CodecError(
            f"JSON Value: {debug_string(document)} not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    return name
