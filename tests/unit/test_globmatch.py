import pytest

from uniws.globmatch import compile_glob


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        # spec 01 §2.3 examples (the origin is lower-cased by the caller)
        ("https://*.example.com", "https://two.example.com", True),
        ("https://*.example.com", "https://a.b.example.com", True),
        ("https://*.example.com", "https://example.com", False),
        ("https://*.example.com", "http://two.example.com", False),
        ("file://*", "file://", True),
        ("null", "null", True),
        ("null", "nul", False),
        ("*", "", True),
        ("*", "anything: at/all.", True),
        ("**", "x", True),
        # `*` crosses `:`, `/`, `.`, `#` (no separators) and newlines
        ("news:*", "news:sport:football", True),
        ("a*b", "a/x.y:z#b", True),
        ("a*b", "a\nb", True),
        ("a*b", "ab", True),
        ("a*b", "abc", False),
        # `?` is exactly one character
        ("ch?", "chx", True),
        ("ch?", "ch", False),
        ("ch?", "chxy", False),
        ("ch?", "ch\u00e9", True),
        # classes
        ("[abc]x", "bx", True),
        ("[abc]x", "dx", False),
        ("[a-c]x", "cx", True),
        ("[a-c]x", "Cx", False),
        ("[!abc]x", "dx", True),
        ("[!abc]x", "ax", False),
        ("[!a-c]x", "dx", True),
        ("[!a-c]x", "bx", False),
        ("[a-cx-z]", "y", True),
        ("[-a]", "-", True),
        ("[a-]", "-", True),
        ("[\\]]", "]", True),
        ("[^]", "^", True),  # `^` is an ordinary member
        # alternatives
        ("{foo,bar}", "foo", True),
        ("{foo,bar}", "bar", True),
        ("{foo,bar}", "baz", False),
        ("{foo,bar}", "foobar", False),
        ("chat:{a,b*}", "chat:bxyz", True),
        ("x{a,{b,c}d}", "xcd", True),
        ("x{a,{b,c}d}", "xc", False),
        ("x{,y}", "x", True),
        ("x{,y}", "xy", True),
        ("a}b", "a}b", True),  # `}` outside braces is literal
        ("a,b", "a,b", True),  # `,` outside braces is literal
        # escapes and regex metacharacters are literal
        ("\\*", "*", True),
        ("\\*", "x", False),
        ("a\\?", "a?", True),
        ("a\\[b", "a[b", True),
        ("a.b", "a.b", True),
        ("a.b", "axb", False),
        ("(a|b)+", "(a|b)+", True),
        ("$ch^", "$ch^", True),
        # whole-string match, case-sensitive
        ("chat", "chat", True),
        ("chat", "chatx", False),
        ("chat", "Chat", False),
        ("ch*t", "xchat", False),
    ],
)
def test_matches(pattern: str, value: str, expected: bool) -> None:
    assert compile_glob(pattern)(value) is expected


@pytest.mark.parametrize("pattern", ["[", "[abc", "[!", "{", "{a,b", "x{a,{b}", "\\", "a\\", "[]", "[!]", "[z-a]", "[a\\"])
def test_malformed_patterns_raise(pattern: str) -> None:
    with pytest.raises(ValueError, match="^malformed pattern: "):
        compile_glob(pattern)


def test_compiled_matcher_is_reusable() -> None:
    match = compile_glob("user:{1,2}?")
    assert [match(value) for value in ("user:1a", "user:2b", "user:3c", "user:1")] == [True, True, False, False]
