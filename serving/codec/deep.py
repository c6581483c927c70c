"""JSON nested deeper than the recursive parsers go (orjson and Python's json stop near 1,000 levels), parsed
iteratively, as TF Serving's rapidjson parses (kParseIterativeFlag: no depth limit).

TF Serving answers `{"instances": [1], "nested": [[[...500,000 deep...]]]}` (json_tensor_test.cc
DeeplyNestedWellFormed): a request may hold deep values it does not use. So the whole body is checked, and a
malformed one refused with the message and offset the recursive path gives, but containers are kept only down to
KEPT_DEPTH levels; a container below that stands as a `DeepValue`, whose contents are checked and dropped. Nothing
reads that far: error messages quote at most 256 bytes (each level costs one), and a tensor has at most 254
dimensions (lists along first elements, which a DeepValue counts, past that are refused). Memory stays that of
KEPT_DEPTH containers plus one byte per open level, whatever the depth.

Values that are not deep (every scalar, and any container Python's scanner takes whole) are parsed by that scanner
in C; this loop walks only the levels that are too deep for it, a run of `[` or of closing brackets in one step.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from json.decoder import scanstring
from typing import Any

import numpy as np

KEPT_DEPTH = 600  # containers opened below this many levels are not kept: deeper than anything reads (see above)
LEVEL_COST_BYTES = 16  # a container this loop opens costs about as much time as parsing this many bytes of JSON
SCAN_PAUSE_LEVELS = 2048  # levels of a deep chain not given to the scanner after it failed on one (it fails about
#                           1,000 levels down)

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_SPACE = frozenset(" \t\n\r")
_OPENING_ARRAYS = re.compile(r"\[[\[ \t\n\r]*")  # arrays each opened as the first element of the one before
_CLOSING = re.compile(r"[\]}][\]} \t\n\r]*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
# A number, literal or string whose checks the scanner would pass (no number near the double range), not followed by
# anything that could continue it: below KEPT_DEPTH, where values are checked and dropped, it is not converted
_PLAIN_SCALAR = re.compile(r'(?:-?(?:0|[1-9][0-9]{0,15})(?:\.[0-9]{1,30})?(?:[eE][+-]?[0-9]{1,2})?|true|false|null|NaN|'
                           r'-?Infinity|"[^"\\\x00-\x1f]*")(?![0-9A-Za-z.+-])')
_CLOSER_OF = bytes.maketrans(b"[{", b"]}")
_OBJECT = ord("{")
_VALUE, _FIRST_VALUE, _AFTER_VALUE, _KEY, _FIRST_KEY = range(5)  # what comes next: after "," or ":", after "[",
#                                                                  after a value, after "," in an object, after "{"


@dataclass(frozen=True)
class DeepValue:
    """A container opened KEPT_DEPTH levels down, checked but not kept; `nested_arrays`: the arrays that open it
    along first elements (itself included, 0 for an object), which a tensor's dense shape would count."""

    nested_arrays: int


class ParseError(ValueError):
    """Malformed JSON, in rapidjson's words (GetParseError_En), at `pos` (a character index of the text)."""

    def __init__(self, message: str, pos: int):
        super().__init__(message)
        self.message, self.pos = message, pos


def parse_cost(body: bytes, threshold: int = 0) -> int:
    """What parsing `body` may cost, as a length of ordinary JSON: its length, plus LEVEL_COST_BYTES for each
    container it opens, which is a step of this module's loop when the body nests too deep for the scanner (~1.5 us;
    a megabyte of `[1,[1,...` is a third of a second). The server decodes bodies that cost little inline, on its
    event loop: a deep body costs as much as it is slow. A body too short to cost `threshold` even if each of its
    bytes opened a container is not counted (its length is returned): the count cost a 23 KB body 7-18 us."""
    if len(body) * (1 + LEVEL_COST_BYTES) < threshold:
        return len(body)
    if len(body) < _COUNT_WITH_NUMPY_FROM:
        return len(body) + LEVEL_COST_BYTES * (body.count(b"[") + body.count(b"{"))
    opened = np.count_nonzero((np.frombuffer(body, np.uint8) | 0x20) == ord("{"))  # "[" is 0x5b, "{" 0x7b
    return len(body) + LEVEL_COST_BYTES * int(opened)


_COUNT_WITH_NUMPY_FROM = 4096  # bytes; two bytes.count over a 64 KB body: 41 us, numpy's one pass 7 us (2 us fixed)


def missing_comma(container: str) -> str:
    """rapidjson's message for what follows a value in `container` ("[" or "{") when it is no comma nor closer."""
    if container == "{":
        return "Missing a comma or '}' after an object member."
    return "Missing a comma or ']' after an array element."


def innermost_container(prefix: str) -> str:
    """'{' or '[' for the innermost object/array still open at the end of `prefix`."""
    open_containers: list[str] = []
    for bracket in re.findall(r"[\[\]{}]", _STRING.sub("", prefix)):
        if bracket in "[{":
            open_containers.append(bracket)
        elif open_containers:
            open_containers.pop()
    return open_containers[-1] if open_containers else ""


def parse(text: str, pos: int, scan_once: Callable[[str, int], tuple[Any, int]]) -> list | dict:
    """The array or object opening at `text[pos]`, which `scan_once` (a json.scanner) found too deep, as it would
    give it otherwise; what follows it is ignored (kParseStopWhenDoneFlag). Raises ParseError for malformed JSON,
    and lets what `scan_once` raises for a bad string or number (json.JSONDecodeError, its hooks' errors) through."""
    kinds = bytearray()  # the open containers, outermost first: "[" or "{"
    kept: list = []  # the open containers that are kept: the outermost KEPT_DEPTH
    root = key = None
    paused_from, paused_to = 0, 1  # depths whose containers are not given to the scanner: the root, which it
    state = _VALUE  #                just ran out of depth on
    while True:
        c = text[pos:pos + 1]
        if c in _SPACE:
            pos = _WHITESPACE.match(text, pos).end()
            c = text[pos:pos + 1]
        if state == _AFTER_VALUE:
            if c == ",":
                state = _KEY if kinds[-1] == _OBJECT else _VALUE
                pos += 1
                continue
            if c != "]" and c != "}":
                raise ParseError(missing_comma(chr(kinds[-1])), pos)
        elif state >= _KEY:
            if c == '"':
                key, pos = scanstring(text, pos + 1)
                if text[pos:pos + 1] != ":":
                    pos = _WHITESPACE.match(text, pos).end()
                    if text[pos:pos + 1] != ":":
                        raise ParseError("Missing a colon after a name of object member.", pos)
                state = _VALUE
                pos += 1
                continue
            if c != "}" or state == _KEY:
                raise ParseError("Missing a name for object member.", pos)
        elif c == "[" or c == "{":
            depth = len(kinds)
            if not paused_from <= depth < paused_to:
                try:
                    value, after = scan_once(text, pos)
                except RecursionError:  # too deep for the scanner: opened here, and the levels below it are not
                    paused_from, paused_to = depth + 1, depth + 1 + SCAN_PAUSE_LEVELS  # tried for a while: a deep
                    #                 chain costs one failure of the scanner (~1,000 levels) every SCAN_PAUSE_LEVELS
                except StopIteration as e:  # no value where one must be, inside
                    raise ParseError("Invalid value.", e.value) from None
                except json.JSONDecodeError as e:  # its message names no container: say which, as rapidjson does
                    if e.msg.startswith("Expecting ',' delimiter"):
                        raise ParseError(missing_comma(innermost_container(text[pos:e.pos])), e.pos) from None
                    raise
                else:
                    if depth <= KEPT_DEPTH:
                        _add(kept[-1], kinds[-1], key, value if depth < KEPT_DEPTH else DeepValue(_arrays(value)))
                    pos, state = after, _AFTER_VALUE
                    continue
            if c == "[":
                after = _OPENING_ARRAYS.match(text, pos).end()
                opened = text.count("[", pos, after)
                kinds += b"[" * opened
                state = _FIRST_VALUE
            else:
                after, opened = pos + 1, 1
                kinds.append(_OBJECT)
                state = _FIRST_KEY
            if depth <= KEPT_DEPTH:
                first = _keep(kinds, kept, depth, opened, key)
                if depth == 0:
                    root = first
            pos = after
            continue
        elif c != "]" or state != _FIRST_VALUE:  # a value; "]" after "[" closes an empty array (below)
            if len(kinds) > KEPT_DEPTH:
                plain = _PLAIN_SCALAR.match(text, pos)
                if plain:
                    pos, state = plain.end(), _AFTER_VALUE
                    continue
            try:
                value, pos = scan_once(text, pos)
            except StopIteration as e:
                raise ParseError("Invalid value.", e.value) from None
            if len(kinds) <= KEPT_DEPTH:
                _add(kept[-1], kinds[-1], key, value)
            state = _AFTER_VALUE
            continue
        # c closes containers: the run of closing brackets from here, each matching what it closes
        after = _CLOSING.match(text, pos).end()
        closers = text[pos:after].encode().translate(None, b" \t\n\r")[:len(kinds)]
        expected = bytes(kinds[len(kinds) - len(closers):])[::-1].translate(_CLOSER_OF)
        if closers != expected:  # the first wrong one, found in numpy: a run can be a million long
            wrong = int(np.argmax(np.frombuffer(closers, np.uint8) != np.frombuffer(expected, np.uint8)))
            chars = np.frombuffer(text[pos:after].encode(), np.uint8)
            at = pos + int(np.flatnonzero((chars == ord("]")) | (chars == ord("}")))[wrong])
            raise ParseError(missing_comma(chr(kinds[-1 - wrong])), at)
        del kinds[len(kinds) - len(closers):]
        if not kinds:
            return root
        del kept[len(kinds):]
        if len(kinds) < paused_from:  # out of the container the scanner failed on: the levels below are tried again
            paused_from = paused_to = 0
        pos, state = after, _AFTER_VALUE


def _keep(kinds: bytearray, kept: list, depth: int, opened: int, key: str | None) -> list | dict | DeepValue:
    """Keep the containers just opened at `depth` (`opened` of them, each the first element of the one before,
    their kinds the last of `kinds`) down to KEPT_DEPTH, and a DeepValue for the one there; each added to its
    parent (the one at depth 0 has none). Returns the first."""
    first = None
    for level in range(depth, min(depth + opened, KEPT_DEPTH + 1)):
        if level == KEPT_DEPTH:
            value = DeepValue(depth + opened - level if kinds[level] == ord("[") else 0)
        else:
            value = [] if kinds[level] == ord("[") else {}
            kept.append(value)
        if level:
            _add(kept[level - 1], kinds[level - 1], key, value)
        first = value if first is None else first
    return first


def _arrays(value: Any) -> int:
    """How many arrays open `value` along first elements (a tensor's dense rank)."""
    count = 0
    while isinstance(value, list):
        count += 1
        value = value[0] if value else None
    return count


def _add(container: list | dict, kind: int, key: str | None, value: Any) -> None:
    if kind == _OBJECT:
        container[key] = value
    else:
        container.append(value)
