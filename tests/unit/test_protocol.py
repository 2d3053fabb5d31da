"""Connect request decoding (spec 01 §3.2, §11 #9-#14)."""

import pytest

from uniws.protocol import ConnectRequestError, SubHint, parse_connect_request


def test_token_and_subs():
    req = parse_connect_request(b'{"token": "t", "subs": {"abc": {}}, "name": "n", "version": "v"}')
    assert (req.token, req.name, req.version) == ("t", "n", "v")
    assert req.subs == {"abc": SubHint()}


def test_keys_are_case_insensitive():
    assert parse_connect_request(b'{"Token":"x","SUBS":{"a":{"Recover":true,"OFFSET":3,"Epoch":"e"}}}').subs == {
        "a": SubHint(True, 3, "e")}


def test_trailing_bytes_after_first_value_are_ignored():
    assert parse_connect_request(b'{"token":"x"} trailing').token == "x"


@pytest.mark.parametrize("payload", [b"null", b"{}", b"  null  "])
def test_null_and_empty_object_are_empty_requests(payload):
    req = parse_connect_request(payload)
    assert req.token == "" and req.subs == {}


def test_null_subscription_is_empty_object():
    assert parse_connect_request(b'{"subs":{"x":null}}').subs == {"x": SubHint()}


def test_data_kept_as_compact_raw_json():
    assert parse_connect_request(b'{"data": {"a": [1, 2]}}').data == b'{"a":[1,2]}'
    assert parse_connect_request(b'{"data": 123456789012345678901234567890}').data == b"123456789012345678901234567890"


@pytest.mark.parametrize("payload", [
    b"hello", b"", b" \n\t", b"[]", b'"x"', b"1", b"true",
    b'{"token":123}', b'{"subs":[]}', b'{"subs":{"a":1}}', b'{"name":{}}',
    b'{"subs":{"a":{"recover":"yes"}}}', b'{"subs":{"a":{"offset":-1}}}',
    b'{"subs":{"a":{"offset":1.5}}}', b'{"subs":{"a":{"offset":18446744073709551616}}}',
    b'{"subs":{"a":{"epoch":5}}}', b"NaN", b'{"token":"x"',
])
def test_malformed_requests_are_rejected(payload):
    with pytest.raises(ConnectRequestError):
        parse_connect_request(payload)


def test_max_offset_accepted():
    assert parse_connect_request(b'{"subs":{"a":{"offset":18446744073709551615}}}').subs["a"].offset == 2**64 - 1
