"""Property tests of the connect-request decoder: any bytes give a request or ConnectRequestError."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from uniws.protocol import ConnectRequest, ConnectRequestError, parse_connect_request

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(1 << 80), max_value=1 << 80)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)

connect_like = st.fixed_dictionaries({}, optional={
    "token": st.text(max_size=30) | json_values,
    "Subs": st.dictionaries(st.text(max_size=10), st.none() | st.fixed_dictionaries({}, optional={
        "recover": st.booleans() | json_values, "offset": st.integers(-5, 1 << 70) | json_values,
        "epoch": st.text(max_size=8) | json_values}), max_size=4) | json_values,
    "data": json_values, "name": st.text(max_size=8) | json_values, "version": json_values,
})


def _decode(payload: bytes):
    try:
        return parse_connect_request(payload)
    except ConnectRequestError:
        return None


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_else(payload):
    result = _decode(payload)
    assert result is None or isinstance(result, ConnectRequest)


@settings(max_examples=400, deadline=None)
@given(connect_like, st.sampled_from(["", " ", "\n", " trailing", "}", "{"]))
def test_structured_requests_decode_or_are_refused(request, tail):
    payload = json.dumps(request).encode() + tail.encode()
    result = _decode(payload)
    if result is None:
        return
    token = request.get("token")
    assert result.token == (token if isinstance(token, str) else "")
    subs = request.get("Subs")
    assert set(result.subs) == (set(subs) if isinstance(subs, dict) else set())


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=300_000), st.sampled_from(["[", "{\"a\":", "{\"data\":["]))
def test_deep_nesting_is_refused_cleanly(depth, opener):
    payload = (opener * depth).encode() if opener != "{\"data\":[" else (b"{\"data\":" + b"[" * depth)
    assert _decode(payload) is None


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=40), st.integers(0, 60))
def test_invalid_utf8_inside_strings(junk, at):
    body = b'{"token":"' + junk.replace(b'"', b"").replace(b"\\", b"") + b'","subs":{"a":{}}}'
    result = _decode(body[:at] + body[at:])
    assert result is None or isinstance(result.token, str)
