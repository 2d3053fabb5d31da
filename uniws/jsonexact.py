"""Exact JSON for payloads that are stored and passed on, never altered.

orjson is fast but silently turns integers outside [-2**63, 2**64-1] into floats and stops
at 1024 levels of nesting; the json module keeps every digit but recurses in C once per
level. Payloads take orjson's path unless they may hold such an integer, and the slow path
turns running out of stack into the ValueError every malformed input gets.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

# Integers beyond 64 bits have at least 20 digits, or 19 after a minus sign. Digits are
# mapped to NUL (which valid JSON never contains raw) so the check is two C-level searches.
_DIGITS_TO_NUL = bytes.maketrans(b"0123456789", b"\0" * 10)
_TWENTY_DIGITS = b"\0" * 20
_NEGATIVE_NINETEEN_DIGITS = b"-" + b"\0" * 19
_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")


def may_hold_huge_integer(raw: bytes) -> bool:
    """Whether `raw` may hold an integer that orjson cannot decode exactly."""
    digits_masked = raw.translate(_DIGITS_TO_NUL)
    return _TWENTY_DIGITS in digits_masked or _NEGATIVE_NINETEEN_DIGITS in digits_masked


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON constant {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # would be re-serialised as null: refuse rather than alter data
        raise ValueError(f"number out of range: {text}")
    return value


# Go-compatible strictness: no NaN/Infinity, no number that overflows a double.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def skip_whitespace(text: str, position: int) -> int:
    """Position of the first non-whitespace character (JSON whitespace only) from `position`."""
    match = _JSON_WHITESPACE.match(text, position)
    return match.end() if match else position


def raw_decode(text: str, position: int = 0) -> tuple[Any, int]:
    """(value, end) of the JSON value at `position`, integers exact; ValueError when invalid."""
    try:
        return _DECODER.raw_decode(text, position)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def loads(raw: bytes) -> Any:
    """One JSON document (surrounding whitespace allowed), integers exact; ValueError when
    invalid. Invalid UTF-8 inside strings is replaced by U+FFFD, as Go's decoder does."""
    if not may_hold_huge_integer(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # maybe invalid UTF-8 inside strings, which Go accepts: retry leniently
    text = raw.decode("utf-8", "replace")
    value, end = raw_decode(text, skip_whitespace(text, 0))
    if skip_whitespace(text, end) != len(text):
        raise ValueError("trailing data after JSON value")
    return value


def dumps(value: Any) -> bytes:
    """Compact single-line JSON of a decoded value (never a raw newline); ValueError when it is
    nested too deeply to encode.

    The result is an exact-size copy: callers keep payloads (history, write queues), and
    retaining orjson's over-allocated-then-shrunk outputs costs the allocator ~2 µs each,
    against ~0.1 µs for the copy.
    """
    try:
        return bytes(memoryview(orjson.dumps(value)))
    except orjson.JSONEncodeError:
        pass  # integers beyond 64 bits, lone surrogates, or nesting deeper than 254
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        try:
            return text.encode()
        except UnicodeEncodeError:  # lone surrogates: keep them as \\u escapes
            return json.dumps(value, separators=(",", ":")).encode()
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
