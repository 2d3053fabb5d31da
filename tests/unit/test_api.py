"""uniws.api driven through Api.handle against a small in-memory stand-in for the node."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uniws import api as api_module
from uniws.api import Api
from uniws.errors import ApiError, Disconnect
from uniws.globmatch import compile_glob

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import api_vectors  # tests/api_vectors.py

A = {"authorization": "apikey secret"}
V5 = {"x-api-key": "secret"}
INFO = b'{"method":"info","params":{}}'
NODE_ENTRY = {"uid": "u-1", "name": "host_8000", "version": "", "num_clients": 0, "num_users": 0, "num_channels": 0, "num_subs": 0}


class StandInNode:
    """The node contract used by the API, in memory, configured like 06 §8.

    Namespaces: top level (history + presence on) and `nohist` (both off); any other
    namespace raises 102. Every call is recorded as (name, args, kwargs).
    """

    def __init__(self) -> None:
        self.shutting_down = False
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.tops: dict[str, int] = {}
        self.failure: BaseException | None = None  # raised by every call when set

    def _enter(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append((name, args, kwargs))
        if self.failure is not None:
            raise self.failure

    def _features_on(self, channel: str) -> bool:
        """102 for an unknown namespace; whether history/presence are on for `channel`."""
        namespace = channel.lstrip("$").partition(":")[0] if ":" in channel else ""
        if namespace not in ("", "nohist"):
            raise ApiError(102)
        return namespace == ""

    def _require_features(self, channel: str) -> None:
        if not self._features_on(channel):
            raise ApiError(108)

    def publish_now(self, channel, data, *, skip_history=False, tags=None):
        """A done future of the position, as an engine that finished at once returns."""
        self._enter("publish", channel, data, skip_history=skip_history, tags=tags)
        position = asyncio.get_running_loop().create_future()
        if not self._features_on(channel) or skip_history:
            position.set_result((0, ""))
        else:
            self.tops[channel] = self.tops.get(channel, 0) + 1
            position.set_result((self.tops[channel], "E"))
        return position

    async def publish(self, channel, data, *, skip_history=False, tags=None):
        return await self.publish_now(channel, data, skip_history=skip_history, tags=tags)

    async def subscribe(self, user, channel, **options):
        self._enter("subscribe", user, channel, **options)
        self._features_on(channel)

    async def unsubscribe(self, user, channel, **options):
        self._enter("unsubscribe", user, channel, **options)
        self._features_on(channel)

    async def disconnect(self, user, **options):
        self._enter("disconnect", user, **options)

    async def refresh(self, user, **options):
        self._enter("refresh", user, **options)

    async def presence(self, channel):
        self._enter("presence", channel)
        self._require_features(channel)
        return {}

    async def presence_stats(self, channel):
        self._enter("presence_stats", channel)
        self._require_features(channel)
        return 0, 0

    async def history(self, channel, *, limit, since, reverse):
        self._enter("history", channel, limit=limit, since=since, reverse=reverse)
        self._require_features(channel)
        return [], self.tops.get(channel, 0), "E"

    async def history_remove(self, channel):
        self._enter("history_remove", channel)
        self._require_features(channel)

    async def channels(self, pattern):
        self._enter("channels", pattern)
        try:
            compile_glob(pattern)
        except ValueError:
            raise ApiError(100) from None
        return {}

    async def info(self):
        self._enter("info")
        return [dict(NODE_ENTRY)]


def make_api(node: StandInNode | None = None, **options: Any) -> tuple[Api, StandInNode]:
    node = node or StandInNode()
    options.setdefault("api_key", "secret")
    options.setdefault("api_insecure", False)
    return Api(node, **options), node


def call(
    api: Api,
    body: bytes | str = INFO,
    *,
    method: str = "POST",
    path: str = "/api",
    query: str = "",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    raw = body.encode() if isinstance(body, str) else body
    status, response_headers, response_body = asyncio.run(
        api.handle(method, path, query, A if headers is None else headers, raw)
    )
    return status, dict(response_headers), response_body


def v3(api: Api, method: str | None, params: Any = None, **extra: Any) -> bytes:
    """Run one v3 command and return the reply body (asserting HTTP 200)."""
    command: dict[str, Any] = dict(extra)
    if method is not None:
        command["method"] = method
    if params is not None:
        command["params"] = params
    status, _, body = call(api, json.dumps(command))
    assert status == 200, body
    return body


def v3_json(api: Api, method: str | None, params: Any = None, **extra: Any) -> Any:
    return json.loads(v3(api, method, params, **extra))


def error(code: int, message: str = "bad request") -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def last_call(node: StandInNode) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    return node.calls[-1]


# ---------------------------------------------------------------------------------------
# 06 §8 vectors #1-#14: transport level


def test_1_get_is_405_with_empty_body() -> None:
    api, _ = make_api()
    assert call(api, method="GET")[::2] == (405, b"")


def test_2_missing_auth_is_401() -> None:
    api, _ = make_api()
    assert call(api, headers={})[::2] == (401, b"")


@pytest.mark.parametrize("authorization", ["apikey wrong", "Bearer secret", "apikey", "apikey secret extra", "secret"])
def test_3_4_wrong_authorization_is_401(authorization: str) -> None:
    api, _ = make_api()
    assert call(api, headers={"authorization": authorization})[::2] == (401, b"")


@pytest.mark.parametrize("authorization", ["APIKEY secret", "ApiKey secret", "apikey  secret", "\tapikey secret "])
def test_5_scheme_is_case_insensitive_and_whitespace_split(authorization: str) -> None:
    api, _ = make_api()
    assert call(api, headers={"authorization": authorization})[0] == 200


def test_6_query_api_key() -> None:
    api, _ = make_api()
    assert call(api, query="api_key=secret", headers={})[0] == 200
    assert call(api, query="x=1&api_key=secret", headers={})[0] == 200
    assert call(api, query="api_key=secret&api_key=other", headers={})[0] == 200
    assert call(api, query="api_key=other&api_key=secret", headers={})[0] == 401  # first value only
    assert call(api, query="api_key=Secret", headers={})[0] == 401


def test_7_x_api_key_header() -> None:
    api, _ = make_api()
    assert call(api, headers={"x-api-key": "secret"})[0] == 200


def test_x_api_key_takes_precedence_over_authorization_but_not_query() -> None:
    api, _ = make_api()
    assert call(api, headers={"x-api-key": "wrong", **A})[0] == 401
    assert call(api, headers={"x-api-key": "wrong"}, query="api_key=secret")[0] == 200
    assert call(api, headers={"x-api-key": "", **A})[0] == 200  # empty header = absent


def test_8_empty_body_is_400_text() -> None:
    api, _ = make_api()
    status, headers, body = call(api, b"")
    assert (status, body) == (400, b"Bad Request\n")
    assert headers["Content-Type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize(
    "body",
    [
        "not json",  # 9
        '{"method":"unknown","params":{}}',  # 10
        "[1,2]",  # 11
        '"x"',
        "5",
        "true",
        '{"method":"send","params":{}}',
        '{"method":"","params":{}}',
        '{"method":null,"params":{}}',
        '{"method":true,"params":{}}',
        '{"method":1.0,"params":{}}',
        '{"method":["info"],"params":{}}',
        '{"method":"info","params":{}',
        '{"method":"info"} x',
        '{"id":-1,"method":"info"}',
        '{"id":"7","method":"info"}',
        '{"id":4294967296,"method":"info"}',
        '{"id":1.5,"method":"info"}',
        '{"method":"info","params":NaN}',
    ],
)
def test_9_10_11_undecodable_stream_is_400(body: str) -> None:
    api, _ = make_api()
    assert call(api, body)[::2] == (400, b"Bad Request\n")


def test_12_info_without_params() -> None:
    api, _ = make_api()
    status, headers, body = call(api, '{"method":"info"}')
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"result": {"nodes": [NODE_ENTRY]}}


def test_13_empty_configured_key_rejects_everything(caplog: pytest.LogCaptureFixture) -> None:
    api, _ = make_api(api_key="")
    with caplog.at_level(logging.WARNING, logger="uniws.api"):
        for headers in ({}, {"authorization": "apikey "}, {"x-api-key": ""}, A):
            assert call(api, headers=headers)[::2] == (401, b"")
        assert call(api, headers={}, query="api_key=")[0] == 401
    assert "API key is empty" in caplog.text


def test_14_insecure_needs_no_key() -> None:
    api, _ = make_api(api_key="", api_insecure=True)
    assert call(api, headers={})[0] == 200


def test_check_order_405_401_503_400() -> None:
    api, node = make_api()
    node.shutting_down = True
    assert call(api, b"", method="GET", headers={})[0] == 405
    assert call(api, b"", headers={})[0] == 401
    assert call(api, b"")[::2] == (503, b"")
    assert call(api, b"", path="/api/publish", headers=V5)[::2] == (503, b"")
    node.shutting_down = False
    assert call(api, b"")[0] == 400
    assert node.calls == []


# ---------------------------------------------------------------------------------------
# routing and prefixes (06 §1, §5.1)


def test_matches_default_prefix() -> None:
    api, _ = make_api()
    assert api.matches("/api") and api.matches("/api/publish") and api.matches("/api/nonexistent")
    for path in ("/api/", "/api/publish/x", "/apix", "/", "/connection/uni_websocket", "/ap"):
        assert not api.matches(path), path


def test_prefix_trailing_slash_is_stripped() -> None:
    api, _ = make_api(handler_prefix="/custom/")
    assert api.matches("/custom") and api.matches("/custom/publish")
    assert not api.matches("/api") and not api.matches("/custom/")
    assert call(api, path="/custom")[0] == 200
    assert call(api, '{"channel":"c","data":1}', path="/custom/publish", headers=V5)[0] == 200


def test_empty_prefix_means_root() -> None:
    api, _ = make_api(handler_prefix="")
    assert api.matches("/") and api.matches("/publish") and api.matches("/batch")
    assert not api.matches("/health") and not api.matches("/publish/x")
    assert call(api, path="/")[0] == 200
    assert call(api, '{"channel":"c","data":1}', path="/publish", headers=V5)[0] == 200


# ---------------------------------------------------------------------------------------
# method decoding (06 §2.3)


@pytest.mark.parametrize("name", ["info", "INFO", "Info", "iNfO", 9])
def test_method_names_are_case_insensitive_and_codes_work(name: Any) -> None:
    api, _ = make_api()
    assert "nodes" in v3_json(api, name, {})["result"]


def test_missing_method_means_publish() -> None:
    api, node = make_api()
    assert v3_json(api, None, {"channel": "chat", "data": 1}) == {"result": {"offset": 1, "epoch": "E"}}
    assert last_call(node)[0] == "publish"


@pytest.mark.parametrize("method", [13, 99, -1, 14, 21, 2**40])
def test_unknown_integer_methods_reply_104(method: int) -> None:
    api, node = make_api()
    assert v3_json(api, method, {}) == error(104, "method not found")
    assert node.calls == []


@pytest.mark.parametrize(
    "name",
    [
        "user_connections", "update_user_status", "get_user_status", "delete_user_status",
        "block_user", "unblock_user", "revoke_token", "INVALIDATE_USER_TOKENS",
    ],
)  # fmt: skip
def test_commercial_names_reply_104(name: str) -> None:
    api, _ = make_api()
    assert v3_json(api, name, {"user": "1"}) == error(104, "method not found")
    assert v3_json(api, name) == error(104, "method not found")


def test_every_v3_code_maps_to_its_method() -> None:
    api, node = make_api()
    names = ["publish", "broadcast", "unsubscribe", "disconnect", "presence", "presence_stats", "history",
             "history_remove", "channels", "info", "rpc", "subscribe", "refresh"]  # fmt: skip
    params = {"channel": "chat", "channels": ["chat"], "data": 1, "user": "u", "method": "m"}
    for code, name in enumerate(names):
        node.calls.clear()
        v3(api, code, params)
        expected_calls = {"rpc": [], "broadcast": ["publish"]}.get(name, [name])
        assert [call[0] for call in node.calls] == expected_calls, name


# ---------------------------------------------------------------------------------------
# params decoding (06 §2.8)


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("publish", {"channel": 123, "data": 1}),  # 22
        ("publish", {"channel": "chat"}),  # 21: no payload
        ("publish", {"channel": "", "data": 1}),  # 20
        ("publish", {"channel": "chat", "data": 1, "skip_history": "true"}),
        ("publish", {"channel": "chat", "data": 1, "skip_history": 1}),
        ("publish", {"channel": "chat", "data": 1, "tags": {"k": 1}}),
        ("publish", {"channel": "chat", "data": 1, "tags": ["k"]}),
        ("publish", {"channel": "chat", "data": 1, "tags": {"a": None, "k": 1}}),
        ("publish", {"channel": "chat", "data": 1, "b64data": 5}),
        ("publish", {"channel": "chat", "b64data": "not base64!"}),
        ("publish", {"channel": "chat", "b64data": "YQ"}),  # missing padding
        ("publish", {"channel": "chat", "b64data": base64.b64encode(b"not json").decode()}),
        ("publish", "params as a string"),
        ("publish", [1]),
        ("history", {"channel": "chat", "limit": "5"}),
        ("history", {"channel": "chat", "limit": 1.0}),
        ("history", {"channel": "chat", "limit": 2**31}),
        ("history", {"channel": "chat", "since": {"offset": -1, "epoch": ""}}),
        ("history", {"channel": "chat", "since": {"offset": 2**64, "epoch": ""}}),
        ("history", {"channel": "chat", "since": "x"}),
        ("history", {"channel": "chat", "reverse": 0}),
        ("history", {"channel": ""}),
        ("presence", {"channel": ""}),
        ("presence_stats", {"channel": None}),
        ("history_remove", {}),
        ("subscribe", {"user": "1", "channel": "chat", "expire_at": "1"}),
        ("subscribe", {"user": "1", "channel": "chat", "override": {"presence": {"value": "yes"}}}),
        ("subscribe", {"user": "1", "channel": "chat", "override": {"presence": True}}),
        ("subscribe", {"user": "1", "channel": "chat", "b64info": 1}),
        ("subscribe", {"user": 1, "channel": "chat"}),
        ("disconnect", {"user": "1", "whitelist": "c"}),
        ("disconnect", {"user": "1", "whitelist": [1]}),
        ("disconnect", {"user": "1", "whitelist": [None, 1]}),
        ("disconnect", {"user": "1", "disconnect": {"code": -1}}),
        ("disconnect", {"user": "1", "disconnect": {"code": 4000, "reason": 5}}),
        ("refresh", {"user": "1", "expired": "true"}),
        ("refresh", {"user": "1", "expire_at": 2**63}),
        ("channels", {"pattern": 1}),
        ("broadcast", {"channels": "chat", "data": 1}),
        ("broadcast", {"channels": [], "data": 1}),  # 46
        ("broadcast", {"channels": ["chat"]}),  # 46
        ("broadcast", {"channels": None, "data": 1}),
        ("rpc", {}),  # 47
        ("rpc", {"method": 1}),
    ],
)
def test_bad_params_reply_107(method: str, params: Any) -> None:
    api, node = make_api()
    assert v3_json(api, method, params) == error(107)
    assert node.calls == []


def test_missing_or_null_params() -> None:
    api, node = make_api()
    assert v3(api, "publish") == b'{"error":{"code":107,"message":"bad request"}}'  # 23
    assert call(api, '{"method":"publish","params":null}')[2] == b'{"error":{"code":107,"message":"bad request"}}'
    assert call(api, '{"method":"disconnect","params":null}')[2] == b"{}"  # all defaults are valid here
    assert last_call(node) == ("disconnect", ("",), {"client": "", "session": "", "whitelist": None, "disconnect": None})
    assert "nodes" in json.loads(call(api, '{"method":"info","params":"ignored"}')[2])["result"]


def test_null_command_is_an_empty_command() -> None:
    api, _ = make_api()
    assert call(api, "null")[::2] == (200, b'{"error":{"code":107,"message":"bad request"}}')


def test_field_names_are_case_insensitive() -> None:
    api, node = make_api()
    body = '{"Method":"PUBLISH","PARAMS":{"Channel":"chat","DATA":{"x":1},"Skip_History":true,"tAgs":{"a":"b"}},"ID":3}'
    assert call(api, body)[2] == b'{"id":3,"result":{}}'
    assert last_call(node) == ("publish", ("chat", b'{"x":1}'), {"skip_history": True, "tags": {"a": "b"}})


def test_later_case_variant_wins_like_go() -> None:
    api, node = make_api()
    v3(api, "publish", {"channel": "first", "Channel": "chat", "data": 1})
    assert last_call(node)[1][0] == "chat"


def test_null_typed_fields_are_zero_values() -> None:
    api, node = make_api()
    v3(api, "publish", {"channel": "chat", "data": 1, "skip_history": None, "tags": None, "b64data": None})
    assert last_call(node) == ("publish", ("chat", b"1"), {"skip_history": False, "tags": None})
    v3(api, "history", {"channel": "chat", "limit": None, "since": None, "reverse": None})
    assert last_call(node) == ("history", ("chat",), {"limit": 0, "since": None, "reverse": False})


def test_raw_fields_keep_any_value_including_null() -> None:
    api, node = make_api()
    for data, expected in [(None, b"null"), ("s", b'"s"'), (0, b"0"), ([1, {"a": None}], b'[1,{"a":null}]'), ({}, b"{}")]:
        v3(api, "publish", {"channel": "chat", "data": data})
        assert last_call(node)[1] == ("chat", expected)


def test_payloads_are_compact_and_never_contain_newlines() -> None:
    api, node = make_api()
    body = '{"method":"publish",\n "params": {\n  "channel": "chat",\n  "data": {"text": "a\\nb", "n": [1, 2]}\n }\n}'
    status, _, reply = call(api, body)
    assert (status, reply) == (200, b'{"result":{"offset":1,"epoch":"E"}}')
    assert last_call(node)[1] == ("chat", b'{"text":"a\\nb","n":[1,2]}')


@pytest.mark.parametrize(
    "number", ["123456789012345678901234567890", "-9223372036854775809", "18446744073709551616", "18446744073709551615"]
)
def test_integers_beyond_64_bits_keep_every_digit(number: str) -> None:
    api, node = make_api()
    call(api, f'{{"method":"publish","params":{{"channel":"chat","data":{{"n":{number}}}}}}}')
    assert last_call(node)[1] == ("chat", f'{{"n":{number}}}'.encode())


def test_integers_beyond_64_bits_in_typed_fields_are_107() -> None:
    api, _ = make_api()
    body = '{"method":"history","params":{"channel":"chat","since":{"offset":123456789012345678901234567890}}}'
    assert json.loads(call(api, body)[2]) == error(107)


def test_invalid_utf8_inside_strings_is_replaced_like_go() -> None:
    api, node = make_api()
    call(api, b'{"method":"publish","params":{"channel":"chat","data":"a\xffb"}}')
    assert last_call(node)[1] == ("chat", '"a\ufffdb"'.encode())


def test_tags_null_value_is_empty_string() -> None:
    api, node = make_api()
    v3(api, "publish", {"channel": "chat", "data": 1, "tags": {"a": None, "b": "x"}})
    assert last_call(node)[2]["tags"] == {"a": "", "b": "x"}


def test_b64data_publishes_the_decoded_json_compactly() -> None:
    api, node = make_api()
    encoded = base64.b64encode(b'{\n  "a": 1\n}').decode()
    assert v3_json(api, "publish", {"channel": "chat", "b64data": encoded, "data": "ignored"})["result"]["offset"] == 1
    assert last_call(node)[1] == ("chat", b'{"a":1}')
    v3(api, "broadcast", {"channels": ["chat", "nohist:x"], "b64data": base64.b64encode(b"[1, 2]").decode()})
    assert [call[1] for call in node.calls[-2:]] == [("chat", b"[1,2]"), ("nohist:x", b"[1,2]")]


# ---------------------------------------------------------------------------------------
# method behaviour at the API boundary (06 §4)


def test_publish_results() -> None:
    api, _ = make_api()
    assert v3_json(api, "publish", {"channel": "chat", "data": {"text": "1"}}) == {"result": {"offset": 1, "epoch": "E"}}
    assert v3_json(api, "publish", {"channel": "chat", "data": 1, "skip_history": True}) == {"result": {}}
    assert v3_json(api, "publish", {"channel": "nohist:room", "data": 1}) == {"result": {}}
    assert v3_json(api, "publish", {"channel": "nope:room", "data": 1}) == error(102, "unknown channel")


def test_broadcast_keeps_per_channel_errors_in_order() -> None:
    api, node = make_api()
    params = {"channels": ["chat", "nope:x", "", "chat"], "data": {"b": 1}, "skip_history": False, "tags": {"k": "v"}}
    assert v3_json(api, "broadcast", params) == {
        "result": {
            "responses": [
                {"result": {"offset": 1, "epoch": "E"}},
                error(102, "unknown channel"),
                error(107),
                {"result": {"offset": 2, "epoch": "E"}},
            ]
        }
    }
    assert [call[1][0] for call in node.calls] == ["chat", "nope:x", "chat"]
    assert node.calls[0][2] == {"skip_history": False, "tags": {"k": "v"}}


def test_broadcast_null_channel_entry_is_an_empty_channel() -> None:
    api, _ = make_api()
    assert v3_json(api, "broadcast", {"channels": [None], "data": 1}) == {"result": {"responses": [error(107)]}}


def test_subscribe_passes_every_option() -> None:
    api, node = make_api()
    params = {
        "user": "42", "channel": "chat", "client": "c", "session": "s", "info": {"i": 1}, "data": [1],
        "expire_at": 2000000000, "recover_since": {"offset": 5, "epoch": "ep"}, "b64info": "eA==",
        "override": {"presence": {"value": False}, "force_recovery": {"value": True}, "force_positioning": {},
                     "force_push_join_leave": {"value": True}, "join_leave": None},
    }  # fmt: skip
    assert v3(api, "subscribe", params) == b"{}"  # 37
    assert last_call(node) == (
        "subscribe",
        ("42", "chat"),
        {
            "client": "c", "session": "s", "info": b'{"i":1}', "data": b"[1]", "expire_at": 2000000000,
            "recover_since": (5, "ep"), "override": {"recover": True, "position": False, "presence": False},
        },
    )  # fmt: skip


def test_subscribe_defaults_and_v3_override_names_win() -> None:
    api, node = make_api()
    v3(api, "subscribe", {"user": "1", "channel": "chat", "override": {"recover": {"value": False}, "force_recovery": {"value": True}}})
    assert last_call(node)[2] == {
        "client": "", "session": "", "info": None, "data": None, "expire_at": 0, "recover_since": None,
        "override": {"recover": False},
    }  # fmt: skip
    v3(api, "subscribe", {"user": "1", "channel": "chat", "info": None, "override": {}})
    assert last_call(node)[2]["info"] == b"null" and last_call(node)[2]["override"] is None


def test_void_methods_reply_bare_object_on_v3() -> None:
    api, node = make_api()
    assert v3(api, "subscribe", {"user": "42", "channel": ""}) == b'{"error":{"code":107,"message":"bad request"}}'
    assert v3_json(api, "subscribe", {"user": "42", "channel": "nope:x"}) == error(102, "unknown channel")  # 38
    assert v3(api, "unsubscribe", {"user": "42", "channel": "chat"}) == b"{}"  # 39
    assert v3(api, "unsubscribe", {"user": "42", "channel": ""}) == b"{}"  # empty channel accepted
    assert v3_json(api, "unsubscribe", {"user": "42", "channel": "nope:x"}) == error(102, "unknown channel")
    assert v3(api, "disconnect", {"user": "42"}) == b"{}"  # 40
    assert v3(api, "refresh", {"user": "42", "expire_at": 2000000000}) == b"{}"  # 41
    assert last_call(node) == (
        "refresh", ("42",), {"client": "", "session": "", "expired": False, "expire_at": 2000000000, "info": None}
    )  # fmt: skip
    assert v3(api, "history_remove", {"channel": "chat"}) == b"{}"  # 42
    assert v3_json(api, "history_remove", {"channel": "nohist:room"}) == error(108, "not available")  # 43


def test_disconnect_object_and_whitelist() -> None:
    api, node = make_api()
    v3(api, "disconnect", {"user": "1", "client": "c", "whitelist": ["a", None], "disconnect": {"code": 4001, "reason": "bye", "reconnect": True}})
    name, args, options = last_call(node)
    disconnect = options.pop("disconnect")
    assert (name, args, options) == ("disconnect", ("1",), {"client": "c", "session": "", "whitelist": ["a", ""]})
    assert isinstance(disconnect, Disconnect)
    assert (disconnect.code, disconnect.reason, disconnect.reconnect) == (4001, "bye", True)
    v3(api, "disconnect", {"user": "1", "disconnect": {"code": 0, "reason": ""}})
    assert last_call(node)[2]["disconnect"] is None  # code 0 -> default 3503


def test_read_methods_results() -> None:
    api, node = make_api()
    assert v3_json(api, "presence", {"channel": "chat"}) == {"result": {"presence": {}}}  # 34
    assert v3_json(api, "presence", {"channel": "nohist:room"}) == error(108, "not available")  # 35
    assert v3(api, "presence_stats", {"channel": "chat"}) == b'{"result":{"num_clients":0,"num_users":0}}'  # 36
    assert v3(api, "history", {"channel": "chat"}) == b'{"result":{"publications":[],"epoch":"E","offset":0}}'
    assert v3_json(api, "history", {"channel": "nohist:room"}) == error(108, "not available")  # 32
    v3(api, "history", {"channel": "chat", "limit": -1, "since": {"offset": 1, "epoch": "E"}, "reverse": True})
    assert last_call(node) == ("history", ("chat",), {"limit": -1, "since": (1, "E"), "reverse": True})
    assert v3_json(api, "channels", {}) == {"result": {"channels": {}}}  # 44
    assert v3_json(api, "channels", {"pattern": "["}) == error(100, "internal server error")


def test_raw_results_from_the_node_are_embedded_verbatim() -> None:
    api, node = make_api()

    async def presence(channel: str) -> dict[str, Any]:
        return {"c1": {"user": "u", "client": "c1", "conn_info": orjson.Fragment(b'{"a":[1,2]}')}}

    async def channels(pattern: str) -> dict[str, int]:
        return {"chat": 2}

    node.presence, node.channels = presence, channels  # type: ignore[method-assign]
    assert v3(api, "presence", {"channel": "chat"}) == (
        b'{"result":{"presence":{"c1":{"user":"u","client":"c1","conn_info":{"a":[1,2]}}}}}'
    )
    assert v3(api, "channels", {}) == b'{"result":{"channels":{"chat":{"num_clients":2}}}}'


def test_rpc() -> None:
    api, _ = make_api()
    assert v3_json(api, "rpc", {"method": "x", "params": {}}) == error(104, "method not found")  # 47
    assert v3_json(api, "rpc", {"method": "x", "params": None}) == error(104, "method not found")
    assert v3_json(api, "rpc", {}) == error(107)


def test_node_errors_and_unexpected_exceptions(caplog: pytest.LogCaptureFixture) -> None:
    api, node = make_api()
    node.failure = ApiError(112)
    assert v3_json(api, "history", {"channel": "chat"}) == error(112, "unrecoverable position")
    node.failure = RuntimeError("boom")
    with caplog.at_level(logging.ERROR, logger="uniws.api"):
        assert v3_json(api, "publish", {"channel": "chat", "data": 1}, id=3) == {
            "id": 3, **error(100, "internal server error")
        }
    assert [record.exc_info[1] for record in caplog.records] == [node.failure]


def test_broadcast_unexpected_exception_is_per_channel_100(caplog: pytest.LogCaptureFixture) -> None:
    api, node = make_api()
    node.failure = RuntimeError("boom")
    with caplog.at_level(logging.ERROR, logger="uniws.api"):
        assert v3_json(api, "broadcast", {"channels": ["a", "b"], "data": 1}) == {
            "result": {"responses": [error(100, "internal server error")] * 2}
        }
    assert len(caplog.records) == 2


def test_unencodable_node_result_is_500() -> None:
    api, node = make_api()

    async def info() -> list[Any]:
        return [object()]

    node.info = info  # type: ignore[method-assign]
    assert call(api)[::2] == (500, b"Internal Server Error\n")


# ---------------------------------------------------------------------------------------
# stream framing and ids (06 §2.4, §2.5)


def test_ids_are_echoed_and_zero_omitted() -> None:
    api, _ = make_api()
    assert call(api, '{"id":7,"method":"subscribe","params":{"user":"1","channel":"chat"}}')[2] == b'{"id":7}'  # 49
    assert call(api, '{"id":8,"method":"info"}')[2].startswith(b'{"id":8,"result":')
    assert call(api, '{"id":0,"method":"subscribe","params":{"user":"1","channel":"chat"}}')[2] == b"{}"
    assert call(api, '{"id":null,"method":"subscribe","params":{"user":"1","channel":"chat"}}')[2] == b"{}"
    assert call(api, '{"id":9,"method":13}')[2] == b'{"id":9,"error":{"code":104,"message":"method not found"}}'
    assert call(api, f'{{"id":{2**32 - 1},"method":"publish"}}')[2] == (
        b'{"id":4294967295,"error":{"code":107,"message":"bad request"}}'
    )


def test_two_lines_exact_body_without_trailing_newline() -> None:  # 50
    api, _ = make_api()
    body = (
        '{"method":"presence_stats","params":{"channel":"chat"}}\n'
        '{"method":"publish","params":{"channel":"nope:a","data":1}}'
    )
    assert call(api, body)[2] == (
        b'{"result":{"num_clients":0,"num_users":0}}\n{"error":{"code":102,"message":"unknown channel"}}'
    )


@pytest.mark.parametrize(
    "body",
    [
        '{"method":"info"}{"method":"info"}',  # 51
        '{"method":"info"}\n{"method":"info"}\n',
        '\n\n{"method":"info"}\r\n  \r\n{"method":"info"}  \n\n',
        '{"method":"info"} {"method":"info"}',
        '{"method":\n"info"}\n{"method":"info"}',
        '  {"method":"info"}\n{\n"method":"info"\n}\n',
    ],
)
def test_json_stream_separators(body: str) -> None:
    api, _ = make_api()
    status, _, reply = call(api, body)
    assert status == 200
    lines = reply.split(b"\n")
    assert len(lines) == 2 and all(json.loads(line)["result"]["nodes"] for line in lines)


def test_fallback_decoding_keeps_order_with_later_lines() -> None:
    api, node = make_api()
    lines = [f'{{"method":"publish","params":{{"channel":"chat","data":{index}}}}}' for index in range(4)]
    body = lines[0] + "\n" + lines[1] + lines[2] + "\n" + lines[3]  # line 2 holds two values
    assert call(api, body)[2].count(b"\n") == 3
    assert [call[1][1] for call in node.calls] == [b"0", b"1", b"2", b"3"]


def test_whitespace_only_body_is_200_empty() -> None:
    api, _ = make_api()
    status, headers, body = call(api, " \n\r\n\t ")
    assert (status, body, headers["Content-Type"]) == (200, b"", "application/json")


@pytest.mark.parametrize("bad_tail", ["{bad", "[1]", "5", '{"method":"nope"}', "\x0c", '{"id":-1}'])
def test_malformed_value_is_400_and_earlier_commands_keep_effects(bad_tail: str) -> None:  # 52
    api, node = make_api()
    body = '{"method":"publish","params":{"channel":"chat","data":1}}\n' + bad_tail + '\n{"method":"publish","params":{"channel":"chat","data":2}}'
    assert call(api, body)[::2] == (400, b"Bad Request\n")
    assert [call[1] for call in node.calls] == [("chat", b"1")]
    assert v3_json(api, "history", {"channel": "chat"})["result"]["offset"] == 1


# ---------------------------------------------------------------------------------------
# v5 endpoints (06 §5)


def v5(api: Api, route: str, body: bytes | str, **options: Any) -> tuple[int, dict[str, str], bytes]:
    options.setdefault("headers", V5)
    return call(api, body, path=f"/api/{route}", **options)


def test_v5_results_and_void_methods() -> None:
    api, node = make_api()
    assert v5(api, "publish", '{"channel":"chat","data":{"a":1}}')[2] == b'{"result":{"offset":1,"epoch":"E"}}'  # 53
    assert v5(api, "subscribe", '{"user":"1","channel":"chat"}')[2] == b'{"result":{}}'  # 54
    assert json.loads(v5(api, "info", "{}")[2]) == {"result": {"nodes": [NODE_ENTRY]}}  # 55
    assert v5(api, "info", "null")[0] == 200
    for route in ("unsubscribe", "disconnect", "refresh"):
        assert v5(api, route, '{"user":"1","channel":"chat"}')[2] == b'{"result":{}}'
    assert v5(api, "history_remove", '{"channel":"chat"}')[2] == b'{"result":{}}'
    assert json.loads(v5(api, "broadcast", '{"channels":["chat"],"data":1}')[2]) == {
        "result": {"responses": [{"result": {"offset": 2, "epoch": "E"}}]}
    }
    assert v5(api, "channels", "{}")[2] == b'{"result":{"channels":{}}}'
    assert v5(api, "presence", '{"channel":"chat"}')[2] == b'{"result":{"presence":{}}}'
    assert v5(api, "presence_stats", '{"channel":"chat"}')[2] == b'{"result":{"num_clients":0,"num_users":0}}'
    assert json.loads(v5(api, "history", '{"channel":"chat","limit":-1}')[2])["result"]["offset"] == 2
    assert node.calls[-1][0] == "history"


def test_v5_errors() -> None:
    api, _ = make_api()
    assert v5(api, "info", "")[::2] == (400, b"Bad Request\n")  # 55
    assert v5(api, "publish", "{}")[::2] == (200, b'{"error":{"code":107,"message":"bad request"}}')  # 56
    for body in ('{"channel":5}', "[1]", '"x"', "{bad", '{"channel":"c","data":1} {}', '{"channel":"c","tags":{"a":1}}'):
        assert v5(api, "publish", body)[::2] == (400, b"Bad Request\n"), body  # 57
    assert v5(api, "info", "[]")[0] == 400
    assert v5(api, "publish", '{"channel":"nope:x","data":1}')[2] == b'{"error":{"code":102,"message":"unknown channel"}}'
    assert v5(api, "rpc", '{"method":"x"}')[2] == b'{"error":{"code":104,"message":"not found"}}'
    assert v5(api, "rpc", '{"method":""}')[2] == b'{"error":{"code":107,"message":"bad request"}}'


def test_v5_routing_errors() -> None:  # 58
    api, _ = make_api()
    status, headers, body = v5(api, "nonexistent", "{}")
    assert (status, body, headers["Content-Type"]) == (404, b"404 page not found\n", "text/plain; charset=utf-8")
    for route in ("connections", "Publish", "user_connections", ""):
        assert v5(api, route, "{}")[0] == 404, route
    assert v5(api, "nonexistent", "{}", method="GET")[0] == 404
    assert v5(api, "publish", "{}", method="GET")[::2] == (405, b"")
    assert v5(api, "publish", "{}", headers={})[::2] == (401, b"")
    assert v5(api, "publish", "{}", headers=A)[0] == 200  # the v3 auth header works too


def test_v5_batch() -> None:  # 59, 60
    api, node = make_api()
    body = (
        '{"commands":[{"publish":{"channel":"chat","data":1}},{"subscribe":{"user":"1","channel":"chat"}},'
        '{"publish":{"channel":"nope:x","data":1}},{}],"parallel":false}'
    )
    assert json.loads(v5(api, "batch", body)[2]) == {
        "replies": [
            {"publish": {"offset": 1, "epoch": "E"}},
            {"subscribe": {}},
            error(102, "unknown channel"),
            error(104, "not found"),
        ]
    }
    for empty in ('{"commands":[]}', "{}", '{"commands":null}', "null"):
        assert v5(api, "batch", empty)[::2] == (200, b'{"replies":[]}'), empty
    legacy = '{"commands":[{"method":"publish","params":{"channel":"chat","data":1}},{"connections":{}},null,{"info":null}]}'
    assert json.loads(v5(api, "batch", legacy)[2]) == {"replies": [error(104, "not found")] * 4}
    assert json.loads(v5(api, "batch", '{"commands":[{"Info":{}},{"rpc":{"method":"m"}}]}')[2]) == {
        "replies": [{"info": {"nodes": [NODE_ENTRY]}}, error(104, "not found")]
    }
    assert [call[0] for call in node.calls] == ["publish", "subscribe", "publish", "info"]


@pytest.mark.parametrize(
    "body",
    [
        '{"commands":[{"publish":{"channel":"chat","data":1}},{"publish":{"channel":5}}]}',
        '{"commands":[{"publish":{"channel":"chat","data":1}},{"info":5}]}',
        '{"commands":[{"publish":{"channel":"chat","data":1}},5]}',
        '{"commands":{"publish":{}}}',
        '{"commands":[],"parallel":"yes"}',
        '{"commands":[{"publish":{"channel":"chat","data":1},"info":[]}]}',
    ],
)
def test_v5_batch_decodes_everything_before_running(body: str) -> None:
    api, node = make_api()
    assert v5(api, "batch", body)[::2] == (400, b"Bad Request\n")
    assert node.calls == []


def test_v5_batch_parallel_keeps_order() -> None:
    api, node = make_api()
    commands = [{"publish": {"channel": f"nohist:{index}", "data": index}} for index in range(50)]
    commands.insert(10, {"presence": {"channel": "nope:x"}})
    reply = json.loads(v5(api, "batch", json.dumps({"commands": commands, "parallel": True}))[2])
    assert reply["replies"][10] == error(102, "unknown channel")
    assert reply["replies"][:2] == [{"publish": {}}, {"publish": {}}]
    publishes = [call[1][1] for call in node.calls if call[0] == "publish"]
    assert sorted(publishes, key=int) == [str(index).encode() for index in range(50)]


def test_v5_transport_error_mode() -> None:  # 61
    api, _ = make_api()
    transport = {**V5, "x-centrifugo-error-mode": "transport"}
    status, headers, body = v5(api, "publish", "{}", headers=transport)
    assert (status, body, headers["Content-Type"]) == (400, b'{"code":107,"message":"bad request"}', "application/json")
    assert v5(api, "publish", '{"channel":"nope:x","data":1}', headers=transport)[::2] == (
        404, b'{"code":102,"message":"unknown channel"}'
    )  # fmt: skip
    assert v5(api, "rpc", '{"method":"x"}', headers=transport)[::2] == (404, b'{"code":104,"message":"not found"}')
    assert v5(api, "presence", '{"channel":"nohist:x"}', headers=transport)[0] == 400
    assert v5(api, "publish", '{"channel":"chat","data":1}', headers=transport)[0] == 200
    batch = '{"commands":[{"publish":{}}]}'
    assert v5(api, "batch", batch, headers=transport)[::2] == (200, b'{"replies":[{"error":{"code":107,"message":"bad request"}}]}')
    configured, _ = make_api(error_mode="transport")
    assert v5(configured, "publish", "{}")[0] == 400
    assert call(configured, '{"method":"publish","params":{}}')[0] == 200  # v3 is never affected


def test_v5_subscribe_override_aliases() -> None:  # 62
    api, node = make_api()
    body = '{"user":"1","channel":"chat","override":{"force_recovery":{"value":true},"force_positioning":{"value":false}}}'
    assert v5(api, "subscribe", body)[2] == b'{"result":{}}'
    assert last_call(node)[2]["override"] == {"recover": True, "position": False}


# ---------------------------------------------------------------------------------------
# the integration vectors (tests/api_vectors.py) against the stand-in node

# Vectors whose expectations need real history/presence behaviour of the node.
NEEDS_REAL_NODE = {"26", "27", "28", "29", "30", "31"}


def test_vector_list_covers_15_to_62() -> None:
    names = [name for name, _, _ in api_vectors.VECTORS]
    assert len(names) == len(set(names))
    assert {int(name.rstrip("abcd")) for name in names} == set(range(15, 63))


def test_vectors_against_stand_in_node() -> None:
    api, _ = make_api()
    state: dict[str, Any] = {}
    failures = []
    for name, request, expected in api_vectors.VECTORS:
        headers = {key.lower(): value for key, value in request.headers.items()}
        body = api_vectors.render_body(request, state)
        status, _, response = call(api, body, method=request.method, path=request.path, query=request.query, headers=headers)
        problems = api_vectors.check(expected, status, response, state)
        if problems and name not in NEEDS_REAL_NODE:
            failures.append((name, problems))
    assert failures == []
    assert state["epoch"] == "E"


# -- the plain-publish fast path decodes exactly as the general decoder ---------------------


_json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                            | st.text(max_size=5),
                            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                         max_size=3), max_leaves=8)
_keys = st.sampled_from(["method", "params", "id", "Method", "ID", "channel", "data", "Data", "b64data", "tags",
                         "skip_history", "x"])
_commands = st.dictionaries(_keys, st.one_of(
    st.sampled_from(["publish", "Publish", "broadcast", ""]), st.integers(-1, 2**33), _json_values,
    st.dictionaries(_keys, st.one_of(st.text(max_size=4), _json_values), max_size=4)), max_size=4)


@settings(max_examples=400)
@given(st.one_of(_commands, _json_values,
                 st.builds(lambda ch, data, cid: {"method": "publish", "params": {"channel": ch, "data": data},
                                                  **({"id": cid} if cid is not None else {})},
                           st.text(max_size=6), _json_values, st.one_of(st.none(), st.integers(-1, 2**33)))))
def test_plain_publish_fast_path_matches_the_general_decoder(command):
    plain = api_module._plain_publish(command)
    if plain is None:
        return                                   # the general path decides everything else
    command_id, channel, payload = plain
    prepared = Api(StandInNode(), api_key="secret", api_insecure=False)._prepare_v3(command)
    assert type(prepared) is tuple and prepared[1] is api_module._PUBLISH
    request = prepared[2]
    assert prepared[0] == command_id and request.channel == channel and channel
    assert (request.b64data, request.skip_history, request.tags) == ("", False, None)
    assert api_module._decode_payload(request.data, request.b64data) == payload
