"""Push encoding vectors (spec 02 §C, 03 §7), for the pure encoder and the Cython fast path."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from uniws import _fastpath, codec

C, V, S = "c1", "0.1.0", "s1"


@pytest.mark.parametrize("push, expected", [
    (codec.pub_push(False, "abc", b'{"x":1}'), b'{"channel":"abc","data":{"data":{"x":1}}}'),            # 1
    (codec.pub_push(False, "abc", b'{"x":1}', 5), b'{"channel":"abc","data":{"data":{"x":1},"offset":5}}'),  # 2
    (codec.pub_push(False, "abc", b'{"a": 1,\n"b": 2}'), b'{"channel":"abc","data":{"data":{"a": 1,"b": 2}}}'),  # 3
    (codec.pub_push(False, "abc", b'"plain string"'), b'{"channel":"abc","data":{"data":"plain string"}}'),    # 4
    (codec.join_leave_push(False, codec.JOIN, "abc", codec.client_info("42", "c1", None, None)),
     b'{"type":1,"channel":"abc","data":{"info":{"user":"42","client":"c1"}}}'),                            # 5
    (codec.join_leave_push(False, codec.JOIN, "abc", codec.client_info("", "c1", None, None)),
     b'{"type":1,"channel":"abc","data":{"info":{"user":"","client":"c1"}}}'),                              # 6
    (codec.disconnect_push(False, 3502, "stale", False), b'{"type":7,"data":{"code":3502,"reason":"stale"}}'),  # 7
    (codec.disconnect_push(False, 3008, "slow", True),
     b'{"type":7,"data":{"code":3008,"reason":"slow","reconnect":true}}'),                                   # 8
    (codec.connect_push(False, client=C, version=V, session=S),
     b'{"type":6,"data":{"client":"c1","version":"0.1.0","session":"s1"}}'),                                # 9
    (codec.connect_push(False, client=C, version=V, subs={"#u": b"{}"}, expires=True, ttl=10, session=S),
     b'{"type":6,"data":{"client":"c1","version":"0.1.0","subs":{"#u":{}},"expires":true,"ttl":10,"session":"s1"}}'),  # 10
    (codec.envelope_v1(codec.SUBSCRIBE, codec.json_string("a<b"), codec.subscribe_payload()),
     b'{"type":5,"channel":"a\\u003cb","data":{}}'),                                                          # 11
    (codec.refresh_push(False, False, 0), b'{"type":8,"data":{}}'),                                        # 14
    (codec.disconnect_push(True, 3005, "connection expired", True),
     b'{"disconnect":{"code":3005,"reason":"connection expired"}}'),                                       # 16
    (codec.subscribe_result(recoverable=True, epoch="abcd", positioned=True),
     b'{"recoverable":true,"epoch":"abcd","positioned":true}'),                                            # 18
    (codec.pub_push(False, "news", b'{"text":"hello"}', 17, {"kind": "greeting"}),
     b'{"channel":"news","data":{"data":{"text":"hello"},"offset":17,"tags":{"kind":"greeting"}}}'),
    (codec.pub_push(True, "news", b'{"text":"hello"}', 17), b'{"channel":"news","pub":{"data":{"text":"hello"},"offset":17}}'),
    (codec.unsubscribe_push(False, "news"), b'{"type":3,"channel":"news","data":{"code":2000,"reason":"server unsubscribe"}}'),
    (codec.unsubscribe_push(True, "news"), b'{"channel":"news","unsubscribe":{"code":2000,"reason":"server unsubscribe"}}'),
    (codec.message_push(False, b'{"alert":"maintenance"}'), b'{"type":4,"data":{"data":{"alert":"maintenance"}}}'),
    (codec.refresh_push(False, True, 3600), b'{"type":8,"data":{"expires":true,"ttl":3600}}'),
    (codec.refresh_push(True, True, 3600), b'{"refresh":{"expires":true,"ttl":3600}}'),
    (codec.disconnect_push(False, 3001, "shutdown", True),
     b'{"type":7,"data":{"code":3001,"reason":"shutdown","reconnect":true}}'),
    (codec.connect_push(True, client=C, version=V, subs={"#test_user": b"{}"}, expires=True, ttl=5, ping=25, session=S),
     b'{"connect":{"client":"c1","version":"0.1.0","subs":{"#test_user":{}},"expires":true,"ttl":5,"ping":25,"session":"s1"}}'),
])
def test_push_vectors(push, expected):
    assert push == expected


@pytest.mark.parametrize("text, expected", [
    ("é", '"é"'.encode()),                       # 12: raw UTF-8, not \u00e9
    ("a\bb", b'"a\\u0008b"'),                    # 13
    ("\f<>&", b'"\\u000c\\u003c\\u003e\\u0026"'),
    ("\n\r\t\"\\", b'"\\n\\r\\t\\"\\\\"'),
    ("\u2028\u2029", b'"\\u2028\\u2029"'),
    ("\ud800", b'"\\ufffd"'),
    ("\x7f", b'"\x7f"'),
    ("plain:chan#1,2", b'"plain:chan#1,2"'),
])
def test_json_string_escaping(text, expected):
    assert codec.json_string(text) == expected


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_frame_text_lengths(size):
    payload = b"x" * size
    frame = codec.frame_text(payload)
    assert frame.endswith(payload) and frame[0] == 0x81
    assert _fastpath.frame_text(payload) == frame
    if size < 126:
        assert frame[1] == size
    elif size < 65536:
        assert frame[1] == 126 and int.from_bytes(frame[2:4], "big") == size
    else:
        assert frame[1] == 127 and int.from_bytes(frame[2:10], "big") == size


PUB_CASES = [
    ("abc", b'{"x":1}', 0, None),
    ("abc", b'{"x":1}', 5, None),
    ("news", b'{"text":"hello"}', 17, {"kind": "greeting"}),
    ("a<b\u00e9", b'"plain string"', 2**64 - 1, {"k": "v", "k2": "<>"}),
    ("big", b"[" + b"1," * 40000 + b"1]", 3, None),
    ("mid", b'"' + b"y" * 200 + b'"', 0, {"t": "1"}),
]


@pytest.mark.parametrize("v2", [False, True])
@pytest.mark.parametrize("channel, data, offset, tags", PUB_CASES)
def test_cython_pub_frame_matches_pure_encoder(v2, channel, data, offset, tags):
    expected = codec.frame_text(codec.pub_push(v2, channel, data, offset, tags))
    got = _fastpath.pub_frame(v2, codec.json_string(channel), data, offset, codec.tags_object(tags))
    assert got == expected



@given(st.one_of(st.text(), st.text(alphabet=st.characters(max_codepoint=0x7F)),
                 st.text(alphabet='ab"\\<>&\x00\x1f\u2028\u00e9', max_size=8)))
def test_cython_json_str_matches_the_reference(value):
    assert _fastpath.json_str(value) == codec.json_string(value)
