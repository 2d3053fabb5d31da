"""Spec 06 §8 server API vectors #15-#62 as data, for tests against a running server.

Server config (memory engine, fresh start, nobody connected):

    {"api_key": "secret", "history_size": 10, "history_ttl": "300s", "presence": true,
     "namespaces": [{"name": "nohist"}]}

`VECTORS` is a list of `(name, Request, Expected)` that MUST run in list order on one
fresh server: offsets and the epoch `E` depend on the earlier vectors. Usage:

    state = {}
    for name, request, expected in VECTORS:
        body = render_body(request, state)          # substitutes the captured epoch
        status, response_body = <send request.method request.path?request.query
                                 with request.headers and body>
        problems = check(expected, status, response_body, state)
        assert not problems or expected.optional, (name, problems)

Multi-part spec vectors are split into `<n>a`, `<n>b`, ...
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

V3_PATH = "/api"
V3_AUTH = {"Authorization": "apikey secret"}
V5_AUTH = {"X-API-Key": "secret"}
EPOCH_PLACEHOLDER = "$EPOCH$"  # replaced in request bodies by the epoch captured at #15


@dataclass(frozen=True)
class Request:
    method: str = "POST"
    path: str = V3_PATH
    headers: dict[str, str] = field(default_factory=lambda: dict(V3_AUTH))
    body: bytes = b""
    query: str = ""


@dataclass(frozen=True)
class Expected:
    status: int = 200
    body: bytes | None = None  # exact body bytes when given
    replies: list[Any] | None = None  # each `\n`-separated line parsed, compared with `matches`
    body_prefix: bytes | None = None
    optional: bool = False  # a MAY of the spec


class Matcher:
    """A placeholder inside expected JSON: decides by itself whether a value fits."""

    def __init__(self, description: str, accepts: Callable[[Any, dict[str, Any]], bool]) -> None:
        self.description = description
        self.accepts = accepts

    def __repr__(self) -> str:
        return f"<{self.description}>"


def _epoch(value: Any, state: dict[str, Any]) -> bool:
    """E: the first use captures the epoch (must be a non-empty string), later uses compare."""
    if "epoch" not in state:
        if type(value) is not str or not value:
            return False
        state["epoch"] = value
    return value == state["epoch"]


def _idle_nodes(value: Any, state: dict[str, Any]) -> bool:
    """Vector #12: exactly one node, string uid/name/version, zero counters."""
    if type(value) is not list or len(value) != 1 or type(value[0]) is not dict:
        return False
    node = value[0]
    strings_ok = all(type(node.get(key)) is str for key in ("uid", "name", "version"))
    counters_ok = all(
        type(node.get(key)) is int and node.get(key) == 0
        for key in ("num_clients", "num_users", "num_channels", "num_subs")
    )
    return strings_ok and counters_ok


EPOCH = Matcher("epoch E", _epoch)
NON_EMPTY_STRING = Matcher("non-empty string", lambda value, state: type(value) is str and value != "")
IDLE_NODES = Matcher("one idle node", _idle_nodes)


def matches(expected: Any, actual: Any, state: dict[str, Any]) -> bool:
    """Structural JSON comparison; bools and ints are not interchangeable."""
    if isinstance(expected, Matcher):
        return expected.accepts(actual, state)
    if type(expected) is dict:
        return (
            type(actual) is dict
            and expected.keys() == actual.keys()
            and all(matches(value, actual[key], state) for key, value in expected.items())
        )
    if type(expected) is list:
        return (
            type(actual) is list
            and len(expected) == len(actual)
            and all(matches(item, other, state) for item, other in zip(expected, actual))
        )
    return type(expected) is type(actual) and expected == actual


def render_body(request: Request, state: dict[str, Any]) -> bytes:
    """The request body with the captured epoch substituted (as a JSON string)."""
    if EPOCH_PLACEHOLDER.encode() not in request.body:
        return request.body
    epoch = json.dumps(state.get("epoch", "")).encode()
    return request.body.replace(f'"{EPOCH_PLACEHOLDER}"'.encode(), epoch)


def check(expected: Expected, status: int, body: bytes, state: dict[str, Any]) -> list[str]:
    """Mismatches between a response and `expected` (empty list = pass)."""
    problems: list[str] = []
    if status != expected.status:
        problems.append(f"status {status} != {expected.status}")
    if expected.body is not None and body != expected.body:
        problems.append(f"body {body!r} != {expected.body!r}")
    if expected.body_prefix is not None and not body.startswith(expected.body_prefix):
        problems.append(f"body {body!r} does not start with {expected.body_prefix!r}")
    if expected.replies is not None:
        try:
            lines = [json.loads(line) for line in body.split(b"\n")] if body else []
        except ValueError:
            return problems + [f"body is not JSON lines: {body!r}"]
        if len(lines) != len(expected.replies):
            problems.append(f"{len(lines)} reply lines != {len(expected.replies)}")
        for line, wanted in zip(lines, expected.replies):
            if not matches(wanted, line, state):
                problems.append(f"reply {line!r} does not match {wanted!r}")
    return problems


# -- builders ------------------------------------------------------------------------------


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def v3(method: str, params: Any, **request: Any) -> Request:
    """A single v3 command `{"method": method, "params": params}` with the A header."""
    return Request(body=_json({"method": method, "params": params}), **request)


def v3_raw(body: bytes | str, **request: Any) -> Request:
    return Request(body=body.encode() if isinstance(body, str) else body, **request)


def v5(route: str, params: Any = None, *, body: bytes | None = None, **request: Any) -> Request:
    request.setdefault("headers", dict(V5_AUTH))
    payload = body if body is not None else _json(params)
    return Request(path=f"{V3_PATH}/{route}", body=payload, **request)


def reply(value: Any) -> Expected:
    return Expected(replies=[value])


def exact(body: bytes) -> Expected:
    return Expected(body=body)


def error(code: int, message: str) -> Expected:
    return reply({"error": {"code": code, "message": message}})


BAD_REQUEST_107 = error(107, "bad request")
UNKNOWN_CHANNEL_102 = error(102, "unknown channel")
NOT_AVAILABLE_108 = error(108, "not available")
HTTP_400 = Expected(status=400, body=b"Bad Request\n")


def _publication(data: Any, offset: int, tags: dict[str, str] | None = None) -> dict[str, Any]:
    publication: dict[str, Any] = {"data": data, "offset": offset}
    if tags:
        publication["tags"] = tags
    return publication


def _history(publications: list[Any], offset: int) -> Expected:
    return reply({"result": {"publications": publications, "epoch": EPOCH, "offset": offset}})


PUB_1 = _publication({"text": "1"}, 1)
PUB_2 = _publication({"text": "2"}, 2, {"k": "v"})
PUB_3 = _publication(None, 3)

# -- the vectors ---------------------------------------------------------------------------

VECTORS: list[tuple[str, Request, Expected]] = [
    # v3 endpoint, commands (in order)
    ("15", v3("publish", {"channel": "chat", "data": {"text": "1"}}), reply({"result": {"offset": 1, "epoch": EPOCH}})),
    (
        "16",
        v3("publish", {"channel": "chat", "data": {"text": "2"}, "tags": {"k": "v"}}),
        reply({"result": {"offset": 2, "epoch": EPOCH}}),
    ),
    ("17", v3("publish", {"channel": "chat", "data": {"text": "x"}, "skip_history": True}), reply({"result": {}})),
    ("18", v3("publish", {"channel": "nohist:room", "data": 1}), reply({"result": {}})),
    ("19", v3("publish", {"channel": "nope:room", "data": 1}), UNKNOWN_CHANNEL_102),
    ("20", v3("publish", {"channel": "", "data": 1}), BAD_REQUEST_107),
    ("21", v3("publish", {"channel": "chat"}), BAD_REQUEST_107),
    ("22", v3("publish", {"channel": 123, "data": 1}), BAD_REQUEST_107),
    ("23", v3_raw('{"method":"publish"}'), BAD_REQUEST_107),
    ("24", v3("publish", {"channel": "chat", "data": None}), reply({"result": {"offset": 3, "epoch": EPOCH}})),
    ("25", v3("history", {"channel": "chat"}), _history([], 3)),
    ("26", v3("history", {"channel": "chat", "limit": -1}), _history([PUB_1, PUB_2, PUB_3], 3)),
    ("27", v3("history", {"channel": "chat", "limit": 1, "reverse": True}), _history([PUB_3], 3)),
    (
        "28",
        v3("history", {"channel": "chat", "limit": 10, "since": {"offset": 1, "epoch": EPOCH_PLACEHOLDER}}),
        _history([PUB_2, PUB_3], 3),
    ),
    (
        "29",
        v3(
            "history",
            {"channel": "chat", "limit": 10, "since": {"offset": 3, "epoch": EPOCH_PLACEHOLDER}, "reverse": True},
        ),
        _history([PUB_2, PUB_1], 3),
    ),
    (
        "30",
        v3("history", {"channel": "chat", "limit": 10, "since": {"offset": 1, "epoch": "wrong"}}),
        error(112, "unrecoverable position"),
    ),
    (
        "31",
        v3(
            "history",
            {"channel": "chat", "limit": 10, "since": {"offset": 0, "epoch": EPOCH_PLACEHOLDER}, "reverse": True},
        ),
        error(100, "internal server error"),
    ),
    ("32", v3("history", {"channel": "nohist:room"}), NOT_AVAILABLE_108),
    (
        "33",
        v3("history", {"channel": "never"}),
        reply({"result": {"publications": [], "epoch": NON_EMPTY_STRING, "offset": 0}}),
    ),
    ("34", v3("presence", {"channel": "chat"}), reply({"result": {"presence": {}}})),
    ("35", v3("presence", {"channel": "nohist:room"}), NOT_AVAILABLE_108),
    ("36", v3("presence_stats", {"channel": "chat"}), reply({"result": {"num_clients": 0, "num_users": 0}})),
    ("37", v3("subscribe", {"user": "42", "channel": "chat"}), exact(b"{}")),
    ("38a", v3("subscribe", {"user": "42", "channel": ""}), BAD_REQUEST_107),
    ("38b", v3("subscribe", {"user": "42", "channel": "nope:x"}), UNKNOWN_CHANNEL_102),
    ("39a", v3("unsubscribe", {"user": "42", "channel": "chat"}), exact(b"{}")),
    ("39b", v3("unsubscribe", {"user": "42", "channel": "nope:x"}), UNKNOWN_CHANNEL_102),
    ("40", v3("disconnect", {"user": "42"}), exact(b"{}")),
    ("41", v3("refresh", {"user": "42", "expire_at": 2000000000}), exact(b"{}")),
    ("42a", v3("history_remove", {"channel": "chat"}), exact(b"{}")),
    ("42b", v3("history", {"channel": "chat", "limit": -1}), _history([], 3)),
    ("42c", v3("publish", {"channel": "chat", "data": 1}), reply({"result": {"offset": 4, "epoch": EPOCH}})),
    ("43", v3("history_remove", {"channel": "nohist:room"}), NOT_AVAILABLE_108),
    ("44a", v3("channels", {}), reply({"result": {"channels": {}}})),
    ("44b", v3("channels", {"pattern": "["}), error(100, "internal server error")),
    (
        "45",
        v3("broadcast", {"channels": ["chat", "nope:x", ""], "data": {"b": 1}}),
        reply(
            {
                "result": {
                    "responses": [
                        {"result": {"offset": 5, "epoch": EPOCH}},
                        {"error": {"code": 102, "message": "unknown channel"}},
                        {"error": {"code": 107, "message": "bad request"}},
                    ]
                }
            }
        ),
    ),
    ("46a", v3("broadcast", {"channels": [], "data": 1}), BAD_REQUEST_107),
    ("46b", v3("broadcast", {"channels": ["chat"]}), BAD_REQUEST_107),
    ("47a", v3("rpc", {"method": "x", "params": {}}), error(104, "method not found")),
    ("47b", v3("rpc", {}), BAD_REQUEST_107),
    ("48a", v3_raw('{"method":9}'), reply({"result": {"nodes": IDLE_NODES}})),
    ("48b", v3_raw('{"method":13,"params":{}}'), error(104, "method not found")),
    ("48c", v3("user_connections", {"user": "1"}), error(104, "method not found")),
    ("49a", v3_raw('{"id":7,"method":"subscribe","params":{"user":"1","channel":"chat"}}'), exact(b'{"id":7}')),
    (
        "49b",
        v3_raw('{"id":8,"method":"info"}'),
        Expected(body_prefix=b'{"id":8,"result":', replies=[{"id": 8, "result": {"nodes": IDLE_NODES}}]),
    ),
    (
        "50",
        v3_raw(
            '{"method":"presence_stats","params":{"channel":"chat"}}\n'
            '{"method":"publish","params":{"channel":"nope:a","data":1}}'
        ),
        exact(b'{"result":{"num_clients":0,"num_users":0}}\n{"error":{"code":102,"message":"unknown channel"}}'),
    ),
    (
        "51",
        v3_raw('{"method":"info"}{"method":"info"}'),
        Expected(replies=[{"result": {"nodes": IDLE_NODES}}, {"result": {"nodes": IDLE_NODES}}]),
    ),
    ("52a", v3_raw('{"method":"publish","params":{"channel":"chat","data":1}}\n{bad'), HTTP_400),
    ("52b", v3("history", {"channel": "chat"}), _history([], 6)),  # the publish of 52a happened
    # v5 endpoints
    ("53", v5("publish", {"channel": "chat", "data": {"a": 1}}), reply({"result": {"offset": 7, "epoch": EPOCH}})),
    ("54", v5("subscribe", {"user": "1", "channel": "chat"}), reply({"result": {}})),
    ("55a", v5("info", {}), reply({"result": {"nodes": IDLE_NODES}})),
    ("55b", v5("info", body=b""), HTTP_400),
    ("56", v5("publish", {}), BAD_REQUEST_107),
    ("57", v5("publish", {"channel": 5}), HTTP_400),
    ("58a", v5("nonexistent", {}), Expected(status=404, body=b"404 page not found\n")),
    ("58b", v5("connections", {"user": "1"}), Expected(status=404)),
    ("58c", v5("publish", {"channel": "chat", "data": 1}, method="GET"), Expected(status=405, body=b"")),
    ("58d", v5("publish", {"channel": "chat", "data": 1}, headers={}), Expected(status=401, body=b"")),
    (
        "59",
        v5(
            "batch",
            {
                "commands": [
                    {"publish": {"channel": "chat", "data": 1}},
                    {"subscribe": {"user": "1", "channel": "chat"}},
                    {"publish": {"channel": "nope:x", "data": 1}},
                    {},
                ]
            },
        ),
        reply(
            {
                "replies": [
                    {"publish": {"offset": 8, "epoch": EPOCH}},
                    {"subscribe": {}},
                    {"error": {"code": 102, "message": "unknown channel"}},
                    {"error": {"code": 104, "message": "not found"}},
                ]
            }
        ),
    ),
    ("60", v5("batch", {"commands": []}), reply({"replies": []})),
    (
        "61",
        v5("publish", {}, headers={**V5_AUTH, "X-Centrifugo-Error-Mode": "transport"}),
        Expected(status=400, replies=[{"code": 107, "message": "bad request"}], optional=True),
    ),
    (
        "62",
        v5("subscribe", {"user": "1", "channel": "chat", "override": {"force_recovery": {"value": True}}}),
        reply({"result": {}}),
    ),
]
