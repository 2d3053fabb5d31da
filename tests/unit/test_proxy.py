"""The proxy's pure part (spec 08 §1-3): request bodies, header capture, reply decoding."""

from __future__ import annotations

import base64
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uniws.auth import Credentials, TokenSub
from uniws.config import ConfigError, load_config
from uniws.errors import EXPIRED, INTERNAL, Disconnect
from uniws.protocol import parse_connect_request
from uniws.proxy import (
    HeaderCapture,
    ProxyFailure,
    Refresh,
    connect_body,
    decode_connect_reply,
    decode_refresh_reply,
    refresh_body,
)

CLIENT = "9336a229-2400-4ebc-8c50-0a643d22e8a0"
NOW = 1_700_000_000


def test_connect_body_vector_1():
    request = parse_connect_request(b'{"data":{"a":1},"name":"n","version":"v","subs":{"news":{}}}')
    assert json.loads(connect_body(CLIENT, request, binary=False)) == {
        "client": CLIENT, "transport": "uni_websocket", "protocol": "json", "encoding": "json",
        "name": "n", "version": "v", "data": {"a": 1}, "channels": ["news"]}


def test_connect_body_binary_vector_12():
    body = json.loads(connect_body(CLIENT, parse_connect_request(b'{"data":{"a":1}}'), binary=True))
    assert body == {"client": CLIENT, "transport": "uni_websocket", "protocol": "json", "encoding": "binary",
                    "b64data": "eyJhIjoxfQ=="}


def test_connect_body_omits_empty_fields():
    assert json.loads(connect_body(CLIENT, parse_connect_request(b"{}"), binary=False)) == {
        "client": CLIENT, "transport": "uni_websocket", "protocol": "json", "encoding": "json"}


def test_refresh_body():
    assert json.loads(refresh_body(CLIENT, "", None, binary=False)) == {
        "client": CLIENT, "transport": "uni_websocket", "protocol": "json", "encoding": "json", "user": ""}
    assert json.loads(refresh_body(CLIENT, "56", b'{"k":"v"}', binary=True))["meta"] == {"k": "v"}


def test_header_capture_is_case_insensitive_and_skips_hop_by_hop():
    capture = HeaderCapture(["X-Real-IP", "cookie", "Cookie", "Host", "Connection", "Authorization"])
    headers = {"x-real-ip": "1.2.3.4", "cookie": "a=1", "host": "h", "connection": "Upgrade", "origin": "o"}
    assert capture(headers) == (("X-Real-IP", "1.2.3.4"), ("cookie", "a=1"))
    assert HeaderCapture([])(headers) == ()


def decode(reply) -> object:
    return decode_connect_reply(orjson.dumps(reply))


def test_connect_result():
    creds = decode({"result": {"user": "56", "expire_at": NOW, "info": {"name": "Alex"}, "data": {"hello": 1},
                               "channels": ["#56", "news"], "subs": {"news": {"data": {"w": 1}}},
                               "meta": {"session": "abc"}}})
    assert creds == Credentials("56", NOW, b'{"name":"Alex"}', {"#56": TokenSub(None, None),
                                                                 "news": TokenSub(None, b'{"w":1}')},
                                b'{"session":"abc"}', "", data=b'{"hello":1}', client_subs=False)


def test_values_beyond_64_bits_and_deep_nesting():
    big = b'123456789012345678901234567'
    creds = decode_connect_reply(b'{"result":{"meta":{"a":%s},"info":%s,"data":[%s]}}' % (big, big, big))
    assert creds.meta == b'{"a":%s}' % big and creds.info == big and creds.data == b"[%s]" % big
    for field in (b"meta", b"info", b"data"):
        with pytest.raises(ProxyFailure):
            decode_connect_reply(b'{"result":{"%s":%s1%s}}' % (field, b"[" * 100_000, b"]" * 100_000))


def test_connect_base64_fields_win():
    creds = decode({"result": {"info": {"x": 1}, "b64info": base64.b64encode(b"raw").decode(),
                               "b64data": base64.b64encode(b'{"d":2}').decode()}})
    assert creds.user == "" and creds.info == b"raw" and creds.data == b'{"d":2}' and creds.subs == {}


@pytest.mark.parametrize("reply, outcome", [
    ({}, None),
    ({"result": None}, None),
    ({"error": {"code": 1000, "message": "nope"}}, INTERNAL),
    ({"error": {"code": 109, "message": "token expired"}}, EXPIRED),
    ({"error": {"code": 110}}, EXPIRED),
    ({"disconnect": {"code": 4002, "reason": "x"}, "error": {"code": 109}, "result": {"user": "1"}},
     Disconnect(4002, "x", False)),
    ({"error": {"code": 1000}, "result": {"user": "1"}}, INTERNAL),
])
def test_connect_outcomes(reply, outcome):
    got = decode(reply)
    if isinstance(outcome, Disconnect):
        assert (got.code, got.reason, got.reconnect) == (outcome.code, outcome.reason, outcome.reconnect)
    else:
        assert got is outcome


def test_custom_disconnect():
    got = decode({"disconnect": {"code": 4001, "reason": "go away", "reconnect": True}})
    assert (got.code, got.reason, got.reconnect) == (4001, "go away", True)


@pytest.mark.parametrize("raw", [
    b"", b"not json", b"[]", b"null", b'"x"', b'{"result":[]}', b'{"result":{"user":5}}',
    b'{"result":{"expire_at":"1"}}', b'{"result":{"expire_at":1.5}}', b'{"result":{"channels":"a"}}',
    b'{"result":{"channels":[1]}}', b'{"result":{"b64info":"!!!"}}', b'{"result":{"b64data":"eA=="}}',
    b'{"result":{"subs":{"a":5}}}', b'{"disconnect":{"reason":"no code"}}', b'{"disconnect":{"code":-1}}',
    b'{"disconnect":{"code":4000,"reconnect":"yes"}}', b'{"error":"x"}', b'{"error":{"code":"1"}}',
    b'{"result":{"expire_at":100000000000000000000}}',
])
def test_malformed_connect_replies_are_failures(raw):
    with pytest.raises(ProxyFailure):
        decode_connect_reply(raw)


@pytest.mark.parametrize("reply, outcome", [
    ({"result": {"expire_at": NOW + 60}}, Refresh(expire_at=NOW + 60)),
    ({"result": {"expire_at": NOW + 60, "info": {"v": 2}}}, Refresh(expire_at=NOW + 60, info=b'{"v":2}')),
    ({"result": {"expire_at": NOW + 60, "b64info": "eA=="}}, Refresh(expire_at=NOW + 60, info=b"x")),
    ({"result": {"expire_at": NOW + 60, "b64info": "!!"}}, Refresh(disconnect=INTERNAL)),
    ({"result": {"expired": True, "expire_at": NOW + 60}}, Refresh(disconnect=EXPIRED)),
    ({"result": {"expire_at": NOW}}, Refresh(disconnect=EXPIRED)),
    ({"result": {}}, Refresh(disconnect=EXPIRED)),
    ({}, Refresh(disconnect=EXPIRED)),
    ({"error": {"code": 1}, "disconnect": {"code": 4000}, "result": {"expire_at": NOW + 1}},
     Refresh(expire_at=NOW + 1)),
])
def test_refresh_outcomes(reply, outcome):
    assert decode_refresh_reply(orjson.dumps(reply), NOW) == outcome


@pytest.mark.parametrize("raw", [b"x", b"[]", b'{"result":5}', b'{"result":{"expired":1}}',
                                 b'{"result":{"expire_at":"1"}}', b'{"result":{"expire_at":1800000000,"b64info":5}}'])
def test_malformed_refresh_replies_are_failures(raw):
    with pytest.raises(ProxyFailure):
        decode_refresh_reply(raw, NOW)


# -- property tests: any reply decodes to an outcome or a ProxyFailure, nothing else ---------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16)
b64ish = st.text("AZaz09+/=!", max_size=12) | st.binary(max_size=9).map(lambda b: base64.b64encode(b).decode())
sub_like = st.fixed_dictionaries({}, optional={
    "info": json_values, "b64info": b64ish | json_values, "data": json_values, "b64data": b64ish | json_values,
    "override": st.dictionaries(st.sampled_from(["presence", "join_leave", "recover", "position"]),
                                st.fixed_dictionaries({}, optional={"value": st.booleans() | json_values})
                                | json_values, max_size=4) | json_values})
result_like = st.fixed_dictionaries({}, optional={
    "user": st.text(max_size=8) | json_values, "expire_at": st.integers(-(1 << 65), 1 << 65) | json_values,
    "expired": st.booleans() | json_values, "info": json_values, "b64info": b64ish | json_values,
    "data": json_values, "b64data": b64ish | json_values,
    "channels": st.lists(st.text(max_size=8), max_size=4) | json_values,
    "subs": st.dictionaries(st.text(max_size=8), sub_like | json_values, max_size=3) | json_values,
    "meta": json_values})
reply_like = st.fixed_dictionaries({}, optional={
    "result": result_like | json_values,
    "error": st.fixed_dictionaries({}, optional={"code": st.integers(-5, 1 << 33) | json_values,
                                                 "message": st.text(max_size=8) | json_values}) | json_values,
    "disconnect": st.fixed_dictionaries({}, optional={
        "code": st.integers(-5, 1 << 33) | json_values, "reason": st.text(max_size=8) | json_values,
        "reconnect": st.booleans() | json_values}) | json_values,
})


def _connect_outcome(raw: bytes):
    try:
        outcome = decode_connect_reply(raw)
    except ProxyFailure:
        return "failure"
    assert outcome is None or isinstance(outcome, (Disconnect, Credentials))
    if isinstance(outcome, Credentials):
        # Everything a connect push or presence embeds raw must be valid JSON (data) or bytes.
        assert outcome.expire_at >= 0 and isinstance(outcome.user, str)
        if outcome.data is not None:
            json.loads(outcome.data)
        for sub in outcome.subs.values():
            assert isinstance(sub, TokenSub)
    return outcome


def _refresh_outcome(raw: bytes):
    try:
        outcome = decode_refresh_reply(raw, NOW)
    except ProxyFailure:
        return "failure"
    assert isinstance(outcome, Refresh)
    assert (outcome.disconnect is None) == (outcome.expire_at > NOW)
    return outcome


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes(raw):
    _connect_outcome(raw)
    _refresh_outcome(raw)


@settings(max_examples=800, deadline=None)
@given(reply_like)
def test_reply_shaped_json(reply):
    raw = json.dumps(reply).encode()
    _connect_outcome(raw)
    _refresh_outcome(raw)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=8), st.integers(0, 1 << 40), json_values, json_values,
       st.lists(st.text(min_size=1, max_size=8), max_size=4))
def test_valid_results_round_trip(user, expire_at, info, data, channels):
    result = {"user": user, "expire_at": expire_at, "info": info, "data": data, "channels": channels}
    creds = decode_connect_reply(json.dumps(result and {"result": result}).encode())
    assert creds.user == user and creds.expire_at == expire_at and set(creds.subs) == set(channels)
    for raw, value in ((creds.info, info), (creds.data, data)):
        assert raw is None if value is None else json.loads(raw) == json.loads(json.dumps(value))


# -- options (07): connect and refresh proxies work, the others refuse to start -------------------

def _load(tmp_path, doc: dict):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    return load_config(str(path), {}, {})


def test_connect_and_refresh_options_are_supported(tmp_path):
    cfg, warnings = _load(tmp_path, {"proxy_connect_endpoint": "http://b/connect", "proxy_connect_timeout": "2s",
                                     "proxy_refresh_endpoint": "https://b/refresh", "proxy_refresh_timeout": "3s",
                                     "proxy_http_headers": ["Cookie"], "proxy_binary_encoding": True,
                                     "proxy_include_connection_meta": True})
    assert warnings == [] and cfg.proxy_connect_timeout == 2.0 and cfg.proxy_http_headers == ["Cookie"]


@pytest.mark.parametrize("doc, message", [
    ({"proxy_rpc_endpoint": "http://b/rpc"}, 'option "proxy_rpc_endpoint" is not supported'),
    ({"proxy_subscribe_endpoint": "http://b/s"}, 'option "proxy_subscribe_endpoint" is not supported'),
    ({"proxy_publish_endpoint": "http://b/p"}, 'option "proxy_publish_endpoint" is not supported'),
    ({"granular_proxy_mode": True}, 'option "granular_proxy_mode" is not supported'),
    ({"proxies": [{"name": "connect", "endpoint": "http://b"}]}, 'option "proxies" is not supported'),
    ({"connect_proxy_name": "connect"}, 'option "connect_proxy_name" is not supported'),
    ({"proxy_grpc_metadata": ["x"]}, 'option "proxy_grpc_metadata" is not supported'),
    ({"proxy_subscribe": True}, 'option "proxy_subscribe" is not supported'),
    ({"namespaces": [{"name": "chat", "proxy_publish": True}]},
     'option "proxy_publish" in namespace "chat" is not supported'),
    ({"rpc_proxy_name": "rpc"}, 'option "rpc_proxy_name" is not supported'),
    ({"proxy_connect_endpoint": "grpc://b:1"}, 'option "proxy_connect_endpoint" must start with http://'),
    ({"proxy_refresh_endpoint": "b/refresh"}, 'option "proxy_refresh_endpoint" must start with http://'),
    ({"proxy_connect_endpoint": "http://b", "proxy_connect_timeout": "0s"},
     'option "proxy_connect_timeout" must be positive'),
])
def test_unsupported_proxy_options_refuse(tmp_path, doc, message):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, doc)
    assert err.value.message.startswith(message), err.value.message
