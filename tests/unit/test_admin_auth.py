"""Admin token and login form parsing (08 §5.2): vectors and properties."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from uniws.admin.auth import TOKEN_TTL, form_field, make_token, token_valid

NOW = 1_800_000_000


def test_token_round_trip_and_expiry():
    token = make_token("s", now=NOW)
    assert token_valid("s", token, now=NOW)
    assert token_valid("s", token, now=NOW + TOKEN_TTL)
    assert not token_valid("s", token, now=NOW + TOKEN_TTL + 1)
    assert not token_valid("s", token, now=NOW - 3600)          # from the future
    assert not token_valid("other", token, now=NOW)
    assert not token_valid("", token, now=NOW)
    for bad in ("", "insecure", ".", f"{NOW}.", f"x{token}", token + "0", "١٢." + token.split(".")[1]):
        assert not token_valid("s", bad, now=NOW), bad


@settings(deadline=None)
@given(st.text(), st.text(max_size=200))
def test_no_token_but_the_signed_one_is_valid(secret, candidate):
    token = make_token(secret or "k", now=NOW)
    assert token_valid(secret or "k", candidate, now=NOW) == (candidate == token)


def _multipart(fields: dict[str, str], boundary: str = "XyZ") -> bytes:
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items()]
    return ("".join(parts) + f"--{boundary}--\r\n").encode()


def test_form_vectors():
    assert form_field("application/x-www-form-urlencoded", b"password=p%20w&x=1", "password") == "p w"
    assert form_field("", b"password=", "password") == ""
    assert form_field("multipart/form-data; boundary=XyZ", _multipart({"a": "1", "password": "pw"}), "password") == "pw"
    assert form_field('multipart/form-data; boundary="XyZ"', _multipart({"password": "pw"}), "password") == "pw"
    assert form_field("multipart/form-data", _multipart({"password": "pw"}), "password") is None   # no boundary
    assert form_field("application/json", b'{"password":"pw"}', "password") is None
    assert form_field("application/x-www-form-urlencoded", b"\xff=\xff", "password") is None


@settings(deadline=None)
@given(st.dictionaries(st.text("abcdefgh_", min_size=1, max_size=8),
                       st.text(st.characters(blacklist_categories=("Cs",)), max_size=50).filter(
                           lambda v: "\r\n--" not in v), max_size=4),
       st.text("abcdefghijklmnop0123456789", min_size=8, max_size=40))
def test_multipart_finds_what_was_sent(fields, boundary):
    body = _multipart(fields, boundary)
    for name, value in fields.items():
        if f"--{boundary}" not in "".join(fields.values()):
            assert form_field(f"multipart/form-data; boundary={boundary}", body, name) == value


@settings(deadline=None)
@given(st.binary(max_size=300), st.text(max_size=60))
def test_form_parsing_never_raises(body, content_type):
    result = form_field(content_type, body, "password")
    assert result is None or isinstance(result, str)
