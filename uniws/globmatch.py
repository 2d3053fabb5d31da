"""Whole-string glob matching for API `channels` patterns (06 §4.11) and origins (01 §2.3).

Syntax: `*` any run of characters (including `:`, `/`, `.`; there are no separators),
`?` exactly one character, `[abc]` / `[a-z]` class, `[!abc]` negated class,
`{a,b}` alternatives (may nest and contain any other syntax), `\\x` literal `x`.
A `,` or `}` outside braces is a literal character.

Patterns are translated to a regular expression once; the returned callable is cheap.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_SPECIAL_CHARACTERS = frozenset("*?[{\\")


def compile_glob(pattern: str) -> Callable[[str], bool]:
    """Compile `pattern`; the result tells whether a whole string matches it.

    Raises ValueError("malformed pattern: ...") for an unclosed `[` or `{`, an empty
    class, a reversed range or a trailing backslash.
    """
    if not _SPECIAL_CHARACTERS.intersection(pattern):
        return pattern.__eq__  # a plain string only matches itself
    if pattern.strip("*") == "":
        return _match_anything
    expression, _ = _translate_sequence(pattern, 0, inside_braces=False)
    try:
        fullmatch = re.compile(expression, re.DOTALL).fullmatch
    except re.error as error:  # defensive: the translation only emits valid syntax
        raise ValueError(f"malformed pattern: {pattern!r}: {error}") from None
    return lambda value: fullmatch(value) is not None


def _match_anything(value: str) -> bool:
    return True


def _malformed(pattern: str, reason: str) -> ValueError:
    return ValueError(f"malformed pattern: {pattern!r}: {reason}")


def _translate_sequence(pattern: str, position: int, *, inside_braces: bool) -> tuple[str, int]:
    """Translate from `position` up to the end (or to a `,`/`}` of the enclosing braces)."""
    parts: list[str] = []
    length = len(pattern)
    while position < length:
        character = pattern[position]
        if inside_braces and character in ",}":
            break
        if character == "*":
            while position + 1 < length and pattern[position + 1] == "*":
                position += 1  # `**` means the same as `*` without separators
            parts.append(".*")
        elif character == "?":
            parts.append(".")
        elif character == "[":
            part, position = _translate_class(pattern, position + 1)
            parts.append(part)
            continue
        elif character == "{":
            part, position = _translate_alternatives(pattern, position + 1)
            parts.append(part)
            continue
        elif character == "\\":
            if position + 1 >= length:
                raise _malformed(pattern, "trailing backslash")
            position += 1
            parts.append(re.escape(pattern[position]))
        else:
            parts.append(re.escape(character))
        position += 1
    return "".join(parts), position


def _translate_alternatives(pattern: str, position: int) -> tuple[str, int]:
    """Translate `a,b,...}` (the opening `{` already consumed)."""
    options: list[str] = []
    while True:
        option, position = _translate_sequence(pattern, position, inside_braces=True)
        options.append(option)
        if position >= len(pattern):
            raise _malformed(pattern, "unclosed '{'")
        if pattern[position] == "}":
            return "(?:" + "|".join(options) + ")", position + 1
        position += 1  # skip the ','


def _translate_class(pattern: str, position: int) -> tuple[str, int]:
    """Translate `abc]`, `a-z]`, `!abc]` (the opening `[` already consumed)."""
    length = len(pattern)
    negated = position < length and pattern[position] == "!"
    if negated:
        position += 1
    items: list[str] = []
    while True:
        if position >= length:
            raise _malformed(pattern, "unclosed '['")
        if pattern[position] == "]":
            break
        low, position = _class_character(pattern, position)
        if position + 1 < length and pattern[position] == "-" and pattern[position + 1] != "]":
            high, position = _class_character(pattern, position + 1)
            if high < low:
                raise _malformed(pattern, f"reversed range {low}-{high}")
            items.append(f"{re.escape(low)}-{re.escape(high)}")
        else:
            items.append(re.escape(low))
    if not items:
        raise _malformed(pattern, "empty character class")
    return ("[^" if negated else "[") + "".join(items) + "]", position + 1


def _class_character(pattern: str, position: int) -> tuple[str, int]:
    """One (possibly backslash-escaped) character inside a class and the next position."""
    if pattern[position] == "\\":
        if position + 1 >= len(pattern):
            raise _malformed(pattern, "trailing backslash")
        position += 1
    return pattern[position], position + 1
