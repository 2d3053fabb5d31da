"""Server HTTP API (spec 06): v3 command streams on `POST <prefix>` and v5 routes on
`POST <prefix>/<method>`.

Layering: `Api.handle` does transport checks (405/401/503/400) and framing; per-method
`_decode_*` functions turn a params object into a request (Go-like strict typing, 06 §2.8),
and `Api._run_*` coroutines validate and call the node. Decoding is separate from running
because a v5 batch decodes every command before executing any of them (06 §5.4).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hmac
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson

from uniws import jsonexact
from uniws.jsonexact import dumps as _dumps
from uniws.eager import run_eager
from uniws.errors import ApiError, Disconnect

Response = tuple[int, list[tuple[str, str]], bytes]

# Marks a key that is absent from a JSON object (distinct from JSON null = None).
_ABSENT: Any = object()

_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

_BATCH_CONCURRENCY = 1024

_ERROR_MESSAGE_V5_NOT_FOUND = "not found"


class _MalformedRequest(Exception):
    """The request body cannot be decoded: HTTP 400 for the whole request."""


class _BadParams(Exception):
    """Params do not decode into the method's request shape: 107 on v3, HTTP 400 on v5."""


# ---------------------------------------------------------------------------------------
# JSON helpers


def _decode_payload(data: Any, b64data: str) -> bytes:
    """The payload bytes of publish/broadcast: b64data wins over data (06 §4.1). JSON too
    deeply nested to encode again is the client's error (107), like any bad payload."""
    try:
        if b64data:
            # Go's StdEncoding skips CR/LF and otherwise requires the padded alphabet.
            decoded = base64.b64decode(b64data.replace("\r", "").replace("\n", ""), validate=True)
            return _dumps(jsonexact.loads(decoded))
        if data is _ABSENT:
            raise ApiError(107)
        return _dumps(data)
    except ValueError:  # binascii.Error, JSON errors, nesting: all ValueErrors
        raise ApiError(107) from None


def _raw_or_none(value: Any) -> bytes | None:
    try:
        return None if value is _ABSENT else _dumps(value)
    except ValueError:
        raise ApiError(107) from None


# ---------------------------------------------------------------------------------------
# Go-like field decoding (06 §2.8): JSON null leaves the zero value, types are strict.


def _fold_keys(obj: dict[str, Any], fields: frozenset[str]) -> dict[str, Any]:
    """Map case variants of known field names onto the canonical names (Go's json does).

    Returns `obj` itself when every key is already canonical (the common case); unknown
    keys are dropped otherwise. Later keys win, like Go assigning fields in order.
    """
    if obj.keys() <= fields:
        return obj
    folded: dict[str, Any] = {}
    for key, value in obj.items():
        if key not in fields:
            # Go also folds U+017F (long s) to "s" and U+212A (Kelvin) to "k"; lower() does the latter.
            key = key.lower().replace("\u017f", "s")
            if key not in fields:
                continue
        folded[key] = value
    return folded


def _string(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if type(value) is str:
        return value
    if value is None:
        return ""
    raise _BadParams(name)


def _boolean(params: dict[str, Any], name: str) -> bool:
    value = params.get(name)
    if value is True or value is False:
        return value
    if value is None:
        return False
    raise _BadParams(name)


def _integer(params: dict[str, Any], name: str, low: int, high: int) -> int:
    value = params.get(name)
    if type(value) is int and low <= value <= high:
        return value
    if value is None:
        return 0
    raise _BadParams(name)


def _string_list(params: dict[str, Any], name: str) -> list[str]:
    value = params.get(name)
    if value is None:
        return []
    if type(value) is not list:
        raise _BadParams(name)
    if all(type(item) is str for item in value):
        return value
    if any(item is not None and type(item) is not str for item in value):
        raise _BadParams(name)
    return ["" if item is None else item for item in value]  # Go leaves "" for a null element


def _tags(params: dict[str, Any]) -> dict[str, str] | None:
    value = params.get("tags")
    if value is None:
        return None
    if type(value) is not dict:
        raise _BadParams("tags")
    if all(type(item) is str for item in value.values()):
        return value or None
    if any(item is not None and type(item) is not str for item in value.values()):
        raise _BadParams("tags")
    return {key: "" if item is None else item for key, item in value.items()}  # null value -> ""


_STREAM_POSITION_FIELDS = frozenset({"offset", "epoch"})


def _stream_position(params: dict[str, Any], name: str) -> tuple[int, str] | None:
    value = params.get(name)
    if value is None:
        return None
    if type(value) is not dict:
        raise _BadParams(name)
    value = _fold_keys(value, _STREAM_POSITION_FIELDS)
    return _integer(value, "offset", 0, _UINT64_MAX), _string(value, "epoch")


_OVERRIDE_FIELDS = frozenset(
    {"presence", "join_leave", "recover", "position", "force_recovery", "force_positioning", "force_push_join_leave"}
)
# v5 alias -> node key; applied before the v3 names so a v3 name wins when both are sent.
_OVERRIDE_ALIASES = (("force_recovery", "recover"), ("force_positioning", "position"))
_OVERRIDE_KEYS = ("presence", "join_leave", "recover", "position")
_BOOL_VALUE_FIELDS = frozenset({"value"})


def _override(params: dict[str, Any]) -> dict[str, bool] | None:
    value = params.get("override")
    if value is None:
        return None
    if type(value) is not dict:
        raise _BadParams("override")
    value = _fold_keys(value, _OVERRIDE_FIELDS)
    override: dict[str, bool] = {}
    _bool_value(value, "force_push_join_leave")  # type-checked, then ignored (06 §4.3)
    for alias, key in _OVERRIDE_ALIASES:
        flag = _bool_value(value, alias)
        if flag is not None:
            override[key] = flag
    for key in _OVERRIDE_KEYS:
        flag = _bool_value(value, key)
        if flag is not None:
            override[key] = flag
    return override or None


def _bool_value(params: dict[str, Any], name: str) -> bool | None:
    """A `{"value": bool}` wrapper; None when absent or null."""
    wrapper = params.get(name)
    if wrapper is None:
        return None
    if type(wrapper) is not dict:
        raise _BadParams(name)
    return _boolean(_fold_keys(wrapper, _BOOL_VALUE_FIELDS), "value")


_DISCONNECT_FIELDS = frozenset({"code", "reason", "reconnect"})


def _disconnect(params: dict[str, Any]) -> Disconnect | None:
    value = params.get("disconnect")
    if value is None:
        return None
    if type(value) is not dict:
        raise _BadParams("disconnect")
    value = _fold_keys(value, _DISCONNECT_FIELDS)
    code = _integer(value, "code", 0, _UINT32_MAX)
    reason = _string(value, "reason")
    reconnect = _boolean(value, "reconnect")
    if code == 0:
        return None  # a close code 0 cannot be sent: use the default force disconnect
    return Disconnect(code, reason, reconnect)


# ---------------------------------------------------------------------------------------
# Requests and their decoders


@dataclass(slots=True)
class PublishRequest:
    channel: str
    data: Any  # parsed JSON value, or _ABSENT
    b64data: str
    skip_history: bool
    tags: dict[str, str] | None


@dataclass(slots=True)
class BroadcastRequest:
    channels: list[str]
    data: Any
    b64data: str
    skip_history: bool
    tags: dict[str, str] | None


@dataclass(slots=True)
class SubscribeRequest:
    user: str
    channel: str
    client: str
    session: str
    info: Any
    data: Any
    expire_at: int
    recover_since: tuple[int, str] | None
    override: dict[str, bool] | None


@dataclass(slots=True)
class UnsubscribeRequest:
    user: str
    channel: str
    client: str
    session: str


@dataclass(slots=True)
class DisconnectRequest:
    user: str
    client: str
    session: str
    whitelist: list[str]
    disconnect: Disconnect | None


@dataclass(slots=True)
class RefreshRequest:
    user: str
    client: str
    session: str
    expired: bool
    expire_at: int
    info: Any


@dataclass(slots=True)
class HistoryRequest:
    channel: str
    limit: int
    since: tuple[int, str] | None
    reverse: bool


_PUBLISH_FIELDS = frozenset({"channel", "data", "b64data", "skip_history", "tags"})
_BROADCAST_FIELDS = frozenset({"channels", "data", "b64data", "skip_history", "tags"})
_SUBSCRIBE_FIELDS = frozenset(
    {"user", "channel", "client", "session", "info", "b64info", "data", "b64data", "expire_at", "recover_since", "override"}
)
_UNSUBSCRIBE_FIELDS = frozenset({"user", "channel", "client", "session"})
_DISCONNECT_REQUEST_FIELDS = frozenset({"user", "client", "session", "whitelist", "disconnect"})
_REFRESH_FIELDS = frozenset({"user", "client", "session", "expired", "expire_at", "info"})
_CHANNEL_FIELDS = frozenset({"channel"})
_HISTORY_FIELDS = frozenset({"channel", "limit", "since", "reverse"})
_PATTERN_FIELDS = frozenset({"pattern"})
_RPC_FIELDS = frozenset({"method", "params"})


def _decode_publish(params: dict[str, Any]) -> PublishRequest:
    params = _fold_keys(params, _PUBLISH_FIELDS)
    return PublishRequest(
        _string(params, "channel"),
        params.get("data", _ABSENT),
        _string(params, "b64data"),
        _boolean(params, "skip_history"),
        _tags(params),
    )


def _decode_broadcast(params: dict[str, Any]) -> BroadcastRequest:
    params = _fold_keys(params, _BROADCAST_FIELDS)
    return BroadcastRequest(
        _string_list(params, "channels"),
        params.get("data", _ABSENT),
        _string(params, "b64data"),
        _boolean(params, "skip_history"),
        _tags(params),
    )


def _decode_subscribe(params: dict[str, Any]) -> SubscribeRequest:
    params = _fold_keys(params, _SUBSCRIBE_FIELDS)
    _string(params, "b64info")  # accepted and ignored, like the reference (06 §4.3)
    _string(params, "b64data")
    return SubscribeRequest(
        _string(params, "user"),
        _string(params, "channel"),
        _string(params, "client"),
        _string(params, "session"),
        params.get("info", _ABSENT),
        params.get("data", _ABSENT),
        _integer(params, "expire_at", _INT64_MIN, _INT64_MAX),
        _stream_position(params, "recover_since"),
        _override(params),
    )


def _decode_unsubscribe(params: dict[str, Any]) -> UnsubscribeRequest:
    params = _fold_keys(params, _UNSUBSCRIBE_FIELDS)
    return UnsubscribeRequest(
        _string(params, "user"), _string(params, "channel"), _string(params, "client"), _string(params, "session")
    )


def _decode_disconnect(params: dict[str, Any]) -> DisconnectRequest:
    params = _fold_keys(params, _DISCONNECT_REQUEST_FIELDS)
    return DisconnectRequest(
        _string(params, "user"),
        _string(params, "client"),
        _string(params, "session"),
        _string_list(params, "whitelist"),
        _disconnect(params),
    )


def _decode_refresh(params: dict[str, Any]) -> RefreshRequest:
    params = _fold_keys(params, _REFRESH_FIELDS)
    return RefreshRequest(
        _string(params, "user"),
        _string(params, "client"),
        _string(params, "session"),
        _boolean(params, "expired"),
        _integer(params, "expire_at", _INT64_MIN, _INT64_MAX),
        params.get("info", _ABSENT),
    )


def _decode_channel(params: dict[str, Any]) -> str:
    return _string(_fold_keys(params, _CHANNEL_FIELDS), "channel")


def _decode_history(params: dict[str, Any]) -> HistoryRequest:
    params = _fold_keys(params, _HISTORY_FIELDS)
    return HistoryRequest(
        _string(params, "channel"),
        _integer(params, "limit", _INT32_MIN, _INT32_MAX),
        _stream_position(params, "since"),
        _boolean(params, "reverse"),
    )


def _decode_pattern(params: dict[str, Any]) -> str:
    return _string(_fold_keys(params, _PATTERN_FIELDS), "pattern")


def _decode_rpc(params: dict[str, Any]) -> str:
    return _string(_fold_keys(params, _RPC_FIELDS), "method")  # rpc params: any JSON, unused


def _decode_nothing(params: dict[str, Any]) -> None:
    return None


# ---------------------------------------------------------------------------------------
# Replies


def _publish_result(offset: int, epoch: str) -> dict[str, Any]:
    """StreamPosition with zero fields omitted (06 §4.1)."""
    result: dict[str, Any] = {}
    if offset:
        result["offset"] = offset
    if epoch:
        result["epoch"] = epoch
    return result


_EMPTY_RESULT = b'{"result":{}}'


def _position_reply(command_id: int, offset: int, epoch: str) -> bytes:
    """The reply line of a publish: most are to channels without history, with no id."""
    if not command_id and not offset and not epoch:
        return _EMPTY_RESULT
    return _v3_reply(command_id, _publish_result(offset, epoch))


def _plain_publish(command: Any) -> tuple[int, str, bytes] | None:
    """(id, channel, payload) of a v3 publish in its common shape: canonical keys, a
    non-empty string channel, a `data` value and nothing else in params. None for anything
    else, which the general decoder then handles with every quirk of 06 §2."""
    if type(command) is not dict or command.get("method") != "publish":
        return None
    params = command.get("params")
    if type(params) is not dict or len(params) != 2:
        return None
    size = len(command)
    if size == 3:
        command_id = command.get("id", _ABSENT)
        if type(command_id) is not int or not 0 <= command_id <= _UINT32_MAX:
            return None
    elif size == 2:
        command_id = 0
    else:
        return None
    channel = params.get("channel")
    data = params.get("data", _ABSENT)
    if type(channel) is not str or not channel or data is _ABSENT:
        return None
    try:
        return command_id, channel, _dumps(data)
    except ValueError:
        return None


def _error_object(code: int, message: str) -> dict[str, Any]:
    return {"code": code, "message": message}


def _v3_reply(command_id: int, result: Any) -> bytes:
    """A v3 reply line; `result` None means a void method (bare `{}`, 06 §2.5)."""
    if result is None:
        return orjson.dumps({"id": command_id}) if command_id else b"{}"
    if command_id:
        return orjson.dumps({"id": command_id, "result": result})
    return orjson.dumps({"result": result})


def _v3_error_reply(command_id: int, code: int, message: str) -> bytes:
    if command_id:
        return orjson.dumps({"id": command_id, "error": _error_object(code, message)})
    return orjson.dumps({"error": _error_object(code, message)})


def _append_line(replies: bytearray, reply: bytes) -> None:
    """Join reply lines with a newline, none at the end (reply lines are never empty)."""
    if replies:
        replies += b"\n"
    replies += reply


def _text_response(status: int, text: bytes) -> Response:
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("X-Content-Type-Options", "nosniff")]
    return status, headers, text


def _empty_response(status: int) -> Response:
    return status, [], b""


def _json_response(status: int, body: bytes) -> Response:
    return status, [("Content-Type", "application/json")], body


def _bad_request() -> Response:
    return _text_response(400, b"Bad Request\n")


# v5 transport error mode (06 §5.5): API error code -> HTTP status.
_TRANSPORT_ERROR_STATUS = {100: 500, 102: 404, 104: 404, 107: 400, 108: 400, 112: 416, 113: 409}


# ---------------------------------------------------------------------------------------
# The API


@dataclass(frozen=True, slots=True)
class _Method:
    name: str
    decode: Callable[[dict[str, Any]], Any]
    run: Callable[[Api, Any], Awaitable[Any]]  # returns the result object, None for void methods


def _normalise_prefix(prefix: str) -> str:
    prefix = prefix.rstrip("/")
    if not prefix.startswith("/"):
        prefix = "/" + prefix  # also turns "" into "/"
    return prefix


_PIPELINE_WINDOW = 1024     # commands of one request in flight at once


def _settled_now(reply: Any) -> bytes | None:
    """The reply line of a publish (future, command id) whose future succeeded; None otherwise."""
    if type(reply) is tuple:
        position, command_id = reply
        if position.done() and not position.cancelled() and position.exception() is None:
            return _position_reply(command_id, *position.result())
    return None


async def _settled(reply: Any) -> bytes:
    """The reply line of a command that did not finish at once: a coroutine of the line, or
    (future of the position, command id) of a publish that waits for its engine."""
    if type(reply) is not tuple:
        return await reply
    position, command_id = reply
    try:
        offset, epoch = await position
    except ApiError as error:
        return _v3_error_reply(command_id, error.code, error.message)
    except Exception:
        logging.getLogger("uniws.api").exception("API method publish failed")
        return _v3_error_reply(command_id, 100, "internal server error")
    return _position_reply(command_id, offset, epoch)


class Api:
    """The server HTTP API in front of a node (see the module docstring)."""

    def __init__(
        self, node: Any, *, api_key: str, api_insecure: bool, handler_prefix: str = "/api", error_mode: str = ""
    ) -> None:
        self._node = node
        self._pipelined = getattr(node, "pipelined", False)
        self._api_key = api_key.encode("utf-8", "surrogatepass")
        self._api_insecure = api_insecure
        self._prefix = _normalise_prefix(handler_prefix)
        self._route_base = self._prefix if self._prefix == "/" else self._prefix + "/"
        self._transport_errors = error_mode == "transport"
        self._logger = logging.getLogger("uniws.api")
        self._empty_key_logged = False
        self.metrics = None            # metrics.WorkerMetrics: command counts and durations, when enabled

    # -- routing -------------------------------------------------------------------------

    def matches(self, path: str) -> bool:
        """Whether `path` is an API endpoint: the prefix itself or `<prefix>/<name>`."""
        if path == self._prefix:
            return True
        if not path.startswith(self._route_base):
            return False
        name = path[len(self._route_base) :]
        if self._prefix == "/":
            return name in _V5_ROUTE_NAMES  # do not shadow every other top-level path
        return bool(name) and "/" not in name

    def body_limit(self, path: str) -> int:
        return sys.maxsize              # the front's http_max_request_body_size alone

    def head_check(self, method: str, path: str, query: str, headers: Mapping[str, str]) -> Response | None:
        """The answer a request gets from its head alone (unknown route, method, key, shutdown),
        so the front can refuse it before reading a body byte; None when the body is needed."""
        if path != self._prefix:
            name = path[len(self._route_base) :] if path.startswith(self._route_base) else ""
            if name != "batch" and name not in _V5_ROUTES:
                return _text_response(404, b"404 page not found\n")
        return self._refusal(method, query, headers)

    def _refusal(self, method: str, query: str, headers: Mapping[str, str]) -> Response | None:
        """Method, key and shutdown, in the order of 06 §2.1: the answer, or None to go on."""
        if method != "POST":
            return _empty_response(405)
        if not self._authorized(query, headers):
            return _empty_response(401)
        if self._node.shutting_down:
            return _empty_response(503)
        return None

    async def handle(
        self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes,
        dispatched: Callable[[], None] | None = None,
    ) -> Response:
        """Answer one HTTP request; never raises for bad input.

        `dispatched` is called once every command of the request has been started (they
        reach each channel's owner in order from then on), at the latest when the answer
        is ready: a connection's next request starts then, so it cannot overtake this one.
        """
        metrics = self.metrics
        tally: dict[str, int] | None = {} if metrics is not None else None
        started = time.perf_counter()
        try:
            if path == self._prefix:
                return await self._handle_v3(method, query, headers, body, dispatched, tally)
            name = path[len(self._route_base) :] if path.startswith(self._route_base) else ""
            if name == "batch":
                return await self._handle_v5(method, query, headers, body, None, tally)
            route = _V5_ROUTES.get(name)
            if route is None:
                return _text_response(404, b"404 page not found\n")
            return await self._handle_v5(method, query, headers, body, route, tally)
        except Exception:
            self._logger.exception("API request failed")
            return _text_response(500, b"Internal Server Error\n")
        finally:
            if dispatched is not None:
                dispatched()
            if tally:
                metrics.observe_api(tally, time.perf_counter() - started)

    def _precheck(self, method: str, query: str, headers: Mapping[str, str], body: bytes) -> Response | None:
        """Checks shared by both formats, in the order of 06 §2.1."""
        refusal = self._refusal(method, query, headers)
        if refusal is None and not body:
            return _bad_request()
        return refusal

    # -- authentication (06 §2.2) --------------------------------------------------------

    def _authorized(self, query: str, headers: Mapping[str, str]) -> bool:
        if self._api_insecure:
            return True
        if not self._api_key:
            if not self._empty_key_logged:
                self._logger.warning("API key is empty: every API request is rejected")
                self._empty_key_logged = True
            return False
        header_key = headers.get("x-api-key", "")
        if header_key:  # when present it is the only header consulted (v5 precedence)
            if self._key_matches(header_key):
                return True
        else:
            parts = headers.get("authorization", "").split()
            if len(parts) == 2 and parts[0].lower() == "apikey" and self._key_matches(parts[1]):
                return True
        if query:
            for name, value in parse_qsl(query, keep_blank_values=True):
                if name == "api_key":
                    return self._key_matches(value)  # first value only, like Go's Query().Get
        return False

    def _key_matches(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode("utf-8", "surrogatepass"), self._api_key)

    # -- v3 format (06 §2) ---------------------------------------------------------------

    async def _handle_v3(self, method: str, query: str, headers: Mapping[str, str], body: bytes,
                         dispatched: Callable[[], None] | None = None, tally: dict | None = None) -> Response:
        rejection = self._precheck(method, query, headers, body)
        if rejection is not None:
            return rejection
        # Reply lines are appended to one buffer as they are produced: keeping a thousand
        # separate orjson outputs alive until a join is several times slower (allocator).
        replies = bytearray()
        try:
            await self._run_command_stream(body, replies, dispatched, tally)
        except _MalformedRequest:
            return _bad_request()  # earlier commands keep their side effects (quirk)
        return _json_response(200, bytes(replies))

    async def _run_command_stream(self, body: bytes, replies: bytearray,
                                  dispatched: Callable[[], None] | None = None, tally: dict | None = None) -> None:
        """Execute every command of the stream in order, appending reply lines to `replies`.

        Raises _MalformedRequest at the first undecodable value.
        """
        lines = body.split(b"\n")
        check_lines = jsonexact.may_hold_huge_integer(body)  # one scan of the body, rarely true
        # With several workers a command may wait for another process (a channel's owner).
        # Commands then all start at once, in order, and are answered in order: requests reach
        # each owner in command order (the bus keeps order), and a batch costs one round trip
        # instead of one per command, so its publications are fanned out together. Pending
        # entries are reply lines, futures of one (run_eager), or (barrier, id) of a post.
        pending: collections.deque | None = collections.deque() if self._pipelined else None
        try:
            await self._run_lines(lines, check_lines, body, replies, pending, tally)
        finally:
            if dispatched is not None:
                dispatched()           # every command has started: the connection's next request may
            if pending:
                await self._drain(pending, replies, 0)

    async def _drain(self, pending: collections.deque, replies: bytearray, keep: int) -> None:
        """Append the replies of the oldest pending commands until at most `keep` remain."""
        while len(pending) > keep:
            reply = pending.popleft()
            if type(reply) is not bytes:
                # A publish whose engine finished meanwhile (a turn's barrier answers a whole
                # batch at once) costs no coroutine.
                reply = _settled_now(reply) or await _settled(reply)
            _append_line(replies, reply)

    async def _run_lines(self, lines: list[bytes], check_lines: bool, body: bytes, replies: bytearray,
                         pending: collections.deque | None, tally: dict | None = None) -> None:
        for index, line in enumerate(lines):
            # Fast path: one command per line.
            try:
                if check_lines and jsonexact.may_hold_huge_integer(line):
                    raise ValueError("needs the exact decoder")
                command = orjson.loads(line)
            except ValueError:
                if not line.strip(b" \t\r"):
                    continue  # blank line
                # Several values on a line, a value spanning lines, or special numbers:
                # decode the rest of the body as a stream.
                if pending:
                    await self._drain(pending, replies, 0)
                offset = sum(len(previous) + 1 for previous in lines[:index])
                await self._run_command_tail(body[offset:], replies, tally)
                break
            reply = self._start_v3(command, tally)     # a malformed command stops the batch here
            if pending is None:
                _append_line(replies, reply if type(reply) is bytes else await _settled(reply))
                continue
            if type(reply) is not bytes and type(reply) is not tuple:
                reply = run_eager(reply)
            pending.append(reply)
            if len(pending) > _PIPELINE_WINDOW:
                await self._drain(pending, replies, _PIPELINE_WINDOW)

    async def _run_command_tail(self, tail: bytes, replies: bytearray, tally: dict | None = None) -> None:
        """Streaming decode of concatenated JSON values (slow path of 06 §2.4)."""
        text = tail.decode("utf-8", "replace")
        position = jsonexact.skip_whitespace(text, 0)
        while position < len(text):
            try:
                command, position = jsonexact.raw_decode(text, position)
            except ValueError:
                raise _MalformedRequest from None
            _append_line(replies, await self._execute_v3(command, tally))
            position = jsonexact.skip_whitespace(text, position)

    async def _execute_v3(self, command: Any, tally: dict | None = None) -> bytes:
        """Run one decoded command and return its reply line; raises _MalformedRequest."""
        reply = self._start_v3(command, tally)
        return reply if type(reply) is bytes else await _settled(reply)

    def _start_v3(self, command: Any, tally: dict | None = None) -> Any:
        """Start one decoded command: its reply line when done at once, else what `_settled`
        turns into one (a coroutine, or a posted publish's (barrier, id)). Raises _MalformedRequest.
        Counts the command's method in `tally` (metrics) when given."""
        plain = _plain_publish(command)
        if plain is not None:
            if tally is not None:
                tally["publish"] = tally.get("publish", 0) + 1
            return self._publish_payload(*plain)
        prepared = self._prepare_v3(command)
        if type(prepared) is bytes:
            return prepared
        if tally is not None:
            name = prepared[1].name
            tally[name] = tally.get(name, 0) + 1
        if prepared[1] is _PUBLISH:                    # a batch's common case: no coroutine
            return self._publish_now(prepared[0], prepared[2])
        return self._run_v3(*prepared)

    def _prepare_v3(self, command: Any) -> bytes | tuple:
        """Decode one command without running it: a reply line already (an error), or
        (id, method, request) for `_run_v3`. Raises _MalformedRequest (HTTP 400)."""
        if type(command) is not dict:
            if command is not None:
                raise _MalformedRequest
            command = {}  # null decodes as an empty command (06 §2.4)
        command = _fold_keys(command, _COMMAND_FIELDS)
        command_id = _command_id(command.get("id"))
        method = _v3_method(command.get("method", _ABSENT))
        if method is None:
            return _v3_error_reply(command_id, 104, "method not found")
        params = command.get("params", _ABSENT)
        try:
            if method is _INFO:
                request = None  # info never looks at params
            elif type(params) is dict:
                request = method.decode(params)
            elif params is None:
                request = method.decode({})  # "params": null -> all defaults
            else:
                raise ApiError(107)  # missing, or not an object
        except _BadParams:
            return _v3_error_reply(command_id, 107, "bad request")
        except ApiError as error:
            return _v3_error_reply(command_id, error.code, error.message)
        return command_id, method, request

    def _publish_now(self, command_id: int, request: PublishRequest) -> bytes | tuple:
        """A publish's reply line when the engine finished at once, else (future of the
        position, command id): no coroutine per publish either way."""
        try:
            if not request.channel:
                raise ApiError(107)
            payload = _decode_payload(request.data, request.b64data)
        except ApiError as error:
            return _v3_error_reply(command_id, error.code, error.message)
        return self._publish_payload(command_id, request.channel, payload, request.skip_history, request.tags)

    def _publish_payload(self, command_id: int, channel: str, payload: bytes, skip_history: bool = False,
                         tags: dict[str, str] | None = None) -> bytes | tuple:
        """Start a decoded publish: its reply line when the engine finished at once, else
        (future of the position, command id)."""
        try:
            position = self._node.publish_now(channel, payload, skip_history=skip_history, tags=tags)
            if not position.done():
                return position, command_id
            offset, epoch = position.result()
        except ApiError as error:
            return _v3_error_reply(command_id, error.code, error.message)
        except Exception:
            self._logger.exception("API method publish failed")
            return _v3_error_reply(command_id, 100, "internal server error")
        return _position_reply(command_id, offset, epoch)

    async def _run_v3(self, command_id: int, method: Any, request: Any) -> bytes:
        try:
            result = await method.run(self, request)
        except ApiError as error:
            return _v3_error_reply(command_id, error.code, error.message)
        except Exception:
            self._logger.exception("API method %s failed", method.name)
            return _v3_error_reply(command_id, 100, "internal server error")
        return _v3_reply(command_id, result)

    # -- v5 format (06 §5) ---------------------------------------------------------------

    async def _handle_v5(
        self, method: str, query: str, headers: Mapping[str, str], body: bytes, route: _Method | None,
        tally: dict | None = None,
    ) -> Response:
        """One v5 route; `route` None is `batch`."""
        rejection = self._precheck(method, query, headers, body)
        if rejection is not None:
            return rejection
        try:
            params = jsonexact.loads(body)
        except ValueError:
            return _bad_request()
        if params is None:
            params = {}
        elif type(params) is not dict:
            return _bad_request()
        if route is None:
            return await self._run_batch(params, tally)
        try:
            request = route.decode(params)
        except _BadParams:
            return _bad_request()
        if tally is not None:
            tally[route.name] = 1
        try:
            result = await route.run(self, request)
        except ApiError as error:
            return self._v5_error_response(error.code, error.message, headers)
        except Exception:
            self._logger.exception("API method %s failed", route.name)
            return self._v5_error_response(100, "internal server error", headers)
        return _json_response(200, orjson.dumps({"result": {} if result is None else result}))

    def _v5_error_response(self, code: int, message: str, headers: Mapping[str, str]) -> Response:
        if code == 104:
            message = _ERROR_MESSAGE_V5_NOT_FOUND
        error = _error_object(code, message)
        if self._transport_errors or headers.get("x-centrifugo-error-mode") == "transport":
            return _json_response(_TRANSPORT_ERROR_STATUS.get(code, 500), orjson.dumps(error))
        return _json_response(200, orjson.dumps({"error": error}))

    async def _run_batch(self, params: dict[str, Any], tally: dict | None = None) -> Response:
        params = _fold_keys(params, _BATCH_FIELDS)
        try:
            commands = _decode_batch_commands(params.get("commands"))
            parallel = _boolean(params, "parallel")
        except _BadParams:
            return _bad_request()  # params are decoded together with the envelope (06 §5.4)
        if tally is not None:
            for command in commands:
                if command is not None:
                    tally[command[0].name] = tally.get(command[0].name, 0) + 1
        if parallel:
            limit = asyncio.Semaphore(_BATCH_CONCURRENCY)
            replies = list(await asyncio.gather(*(self._batch_reply(command, limit) for command in commands)))
        else:
            replies = [await self._batch_reply(command, None) for command in commands]
        return _json_response(200, orjson.dumps({"replies": replies}))

    async def _batch_reply(
        self, command: tuple[_Method, Any] | None, limit: asyncio.Semaphore | None
    ) -> dict[str, Any]:
        if command is None:
            return {"error": _error_object(104, _ERROR_MESSAGE_V5_NOT_FOUND)}
        method, request = command
        try:
            if limit is None:
                result = await method.run(self, request)
            else:
                async with limit:
                    result = await method.run(self, request)
        except ApiError as error:
            message = _ERROR_MESSAGE_V5_NOT_FOUND if error.code == 104 else error.message
            return {"error": _error_object(error.code, message)}
        except Exception:
            self._logger.exception("API method %s failed", method.name)
            return {"error": _error_object(100, "internal server error")}
        return {method.name: {} if result is None else result}

    # -- methods (06 §4) -----------------------------------------------------------------

    async def _run_publish(self, request: PublishRequest) -> dict[str, Any]:
        if not request.channel:
            raise ApiError(107)
        payload = _decode_payload(request.data, request.b64data)
        offset, epoch = await self._node.publish(
            request.channel, payload, skip_history=request.skip_history, tags=request.tags
        )
        return _publish_result(offset, epoch)

    async def _run_broadcast(self, request: BroadcastRequest) -> dict[str, Any]:
        if not request.channels:
            raise ApiError(107)
        payload = _decode_payload(request.data, request.b64data)
        # Every channel's publish starts now, in order (what reaches an owner keeps that order);
        # then the ones that wait on an owner are awaited together.
        started = [self._start_one(channel, payload, request) for channel in request.channels]
        return {"responses": [one if type(one) is dict else await one for one in started]}

    def _start_one(self, channel: str, payload: bytes, request: BroadcastRequest) -> Any:
        """One channel of a broadcast: its response, or a coroutine of it. Errors stay inside
        this channel's response (06 §4.2)."""
        if not channel:
            return {"error": _error_object(107, "bad request")}
        try:
            position = self._node.publish_now(channel, payload, skip_history=request.skip_history, tags=request.tags)
            if not position.done():
                return self._finish_one(channel, position)
            return {"result": _publish_result(*position.result())}
        except Exception as exc:
            return self._broadcast_error(channel, exc)

    async def _finish_one(self, channel: str, position: asyncio.Future) -> dict[str, Any]:
        try:
            offset, epoch = await position
        except Exception as exc:
            return self._broadcast_error(channel, exc)
        return {"result": _publish_result(offset, epoch)}

    def _broadcast_error(self, channel: str, exc: Exception) -> dict[str, Any]:
        if isinstance(exc, ApiError):
            return {"error": _error_object(exc.code, exc.message)}
        self._logger.exception("API broadcast to %r failed", channel, exc_info=exc)
        return {"error": _error_object(100, "internal server error")}

    async def _run_subscribe(self, request: SubscribeRequest) -> None:
        if not request.channel:
            raise ApiError(107)
        await self._node.subscribe(
            request.user,
            request.channel,
            client=request.client,
            session=request.session,
            info=_raw_or_none(request.info),
            data=_raw_or_none(request.data),
            expire_at=request.expire_at,
            recover_since=request.recover_since,
            override=request.override,
        )

    async def _run_unsubscribe(self, request: UnsubscribeRequest) -> None:
        # An empty channel is accepted (06 §4.4); the node checks the namespace.
        await self._node.unsubscribe(request.user, request.channel, client=request.client, session=request.session)

    async def _run_disconnect(self, request: DisconnectRequest) -> None:
        await self._node.disconnect(
            request.user,
            client=request.client,
            session=request.session,
            whitelist=request.whitelist or None,
            disconnect=request.disconnect,
        )

    async def _run_refresh(self, request: RefreshRequest) -> None:
        await self._node.refresh(
            request.user,
            client=request.client,
            session=request.session,
            expired=request.expired,
            expire_at=request.expire_at,
            info=_raw_or_none(request.info),
        )

    async def _run_presence(self, channel: str) -> dict[str, Any]:
        if not channel:
            raise ApiError(107)
        return {"presence": await self._node.presence(channel)}

    async def _run_presence_stats(self, channel: str) -> dict[str, Any]:
        if not channel:
            raise ApiError(107)
        num_clients, num_users = await self._node.presence_stats(channel)
        return {"num_clients": num_clients, "num_users": num_users}

    async def _run_history(self, request: HistoryRequest) -> dict[str, Any]:
        if not request.channel:
            raise ApiError(107)
        publications, offset, epoch = await self._node.history(
            request.channel, limit=request.limit, since=request.since, reverse=request.reverse
        )
        return {"publications": publications, "epoch": epoch, "offset": offset}

    async def _run_history_remove(self, channel: str) -> None:
        if not channel:
            raise ApiError(107)
        await self._node.history_remove(channel)

    async def _run_channels(self, pattern: str) -> dict[str, Any]:
        channels = await self._node.channels(pattern)
        return {"channels": {channel: {"num_clients": count} for channel, count in channels.items()}}

    async def _run_info(self, request: None) -> dict[str, Any]:
        return {"nodes": await self._node.info()}

    async def _run_rpc(self, method: str) -> dict[str, Any]:
        # No RPC extensions exist (06 §4.13).
        raise ApiError(107 if not method else 104)


# ---------------------------------------------------------------------------------------
# Method tables

_PUBLISH = _Method("publish", _decode_publish, Api._run_publish)
_INFO = _Method("info", _decode_nothing, Api._run_info)

# Order matters for a v5 batch command carrying several method keys: the first wins.
_V5_ROUTES: dict[str, _Method] = {
    method.name: method
    for method in (
        _PUBLISH,
        _Method("broadcast", _decode_broadcast, Api._run_broadcast),
        _Method("subscribe", _decode_subscribe, Api._run_subscribe),
        _Method("unsubscribe", _decode_unsubscribe, Api._run_unsubscribe),
        _Method("disconnect", _decode_disconnect, Api._run_disconnect),
        _Method("presence", _decode_channel, Api._run_presence),
        _Method("presence_stats", _decode_channel, Api._run_presence_stats),
        _Method("history", _decode_history, Api._run_history),
        _Method("history_remove", _decode_channel, Api._run_history_remove),
        _INFO,
        _Method("rpc", _decode_rpc, Api._run_rpc),
        _Method("refresh", _decode_refresh, Api._run_refresh),
        _Method("channels", _decode_pattern, Api._run_channels),
    )
}
_V5_ROUTE_NAMES = frozenset(_V5_ROUTES) | {"batch"}
_BATCH_COMMAND_FIELDS = frozenset(_V5_ROUTES)
_BATCH_FIELDS = frozenset({"commands", "parallel"})

_V3_CODES = (
    "publish", "broadcast", "unsubscribe", "disconnect", "presence", "presence_stats", "history",
    "history_remove", "channels", "info", "rpc", "subscribe", "refresh",
)  # fmt: skip
# Commercial-edition names (codes 14-21): valid names, but the reply is 104 (06 §2.3).
_V3_COMMERCIAL_NAMES = (
    "user_connections", "update_user_status", "get_user_status", "delete_user_status",
    "block_user", "unblock_user", "revoke_token", "invalidate_user_tokens",
)  # fmt: skip
_V3_BY_CODE: dict[int, _Method] = {code: _V5_ROUTES[name] for code, name in enumerate(_V3_CODES)}
# None marks a known but unimplemented method (reply 104).
_V3_BY_NAME: dict[str, _Method | None] = {name: _V5_ROUTES[name] for name in _V3_CODES} | dict.fromkeys(
    _V3_COMMERCIAL_NAMES
)
_V3_BY_UPPER_NAME: dict[str, _Method | None] = {name.upper(): method for name, method in _V3_BY_NAME.items()}
_COMMAND_FIELDS = frozenset({"id", "method", "params"})


def _command_id(value: Any) -> int:
    """The uint32 command id; a bad id fails the whole command decode (HTTP 400)."""
    if type(value) is int and 0 <= value <= _UINT32_MAX:
        return value
    if value is None:
        return 0
    raise _MalformedRequest


def _v3_method(value: Any) -> _Method | None:
    """Method decoding quirks of 06 §2.3; None means reply 104. Raises _MalformedRequest."""
    if type(value) is str:
        method = _V3_BY_NAME.get(value, _ABSENT)
        if method is _ABSENT:
            # Go upper-cases the name and looks it up among the enum names.
            method = _V3_BY_UPPER_NAME.get(value.upper(), _ABSENT)
            if method is _ABSENT:
                raise _MalformedRequest  # unknown names fail the whole request (quirk)
        return method
    if value is _ABSENT:
        return _PUBLISH
    if type(value) is int and _INT64_MIN <= value <= _INT64_MAX:
        return _V3_BY_CODE.get(value)  # commercial codes 14-21 and unknown codes -> 104
    raise _MalformedRequest  # null, bool, float, array, object, huge integer


def _decode_batch_commands(commands: Any) -> list[tuple[_Method, Any] | None]:
    """Decode every batch command up front; None marks a command without a known method."""
    if commands is None:
        return []
    if type(commands) is not list:
        raise _BadParams("commands")
    return [_decode_batch_command(command) for command in commands]


def _decode_batch_command(command: Any) -> tuple[_Method, Any] | None:
    if command is None:
        return None
    if type(command) is not dict:
        raise _BadParams("command")
    command = _fold_keys(command, _BATCH_COMMAND_FIELDS)
    chosen: tuple[_Method, Any] | None = None
    for name, method in _V5_ROUTES.items():
        params = command.get(name)
        if params is None:
            continue
        if type(params) is not dict:
            raise _BadParams(name)
        request = method.decode(params)  # every present method must decode, like Go's struct
        if chosen is None:
            chosen = (method, request)
    return chosen
