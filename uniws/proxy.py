"""Connect and refresh proxies (spec 08 §1-3): the application backend decides who connects.

The pure part builds request bodies and decodes replies into outcomes (Credentials,
a Disconnect, a refresh decision); every malformed reply is a `ProxyFailure`. The
I/O part, `ProxyClient`, POSTs them with one aiohttp keep-alive session per worker
and a bounded connection pool, each call bounded by its timeout.

Choices where the reference is silent or odd (written down in README-proxy.md):
* header names in `proxy_http_headers` match case-insensitively (08 §1.1 allows it); hop-by-hop
  headers, `Host`, `Content-Length` and `Content-Type` are never copied;
* `result.subs` is honoured with the token's `subs` schema (later versions do; v3.2.3 ignored it),
  together with `channels`: the union, a channel in both takes its `subs` options;
* a `disconnect` object must have an integer `code` in 1..2**32-1 and a string `reason` (may be
  empty), else the reply is a proxy failure (3004); `b64data` must decode to JSON (it is
  embedded in the connect push);
* a reply larger than MAX_REPLY_BYTES is a proxy failure (refused before it is buffered).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from .auth import Credentials, TokenError, TokenSub, parse_json, raw_json_or_base64, subs_from_json
from .errors import EXPIRED, INTERNAL, Disconnect, connect_error_to_disconnect
from .protocol import ConnectRequest

log = logging.getLogger("uniws.proxy")

POOL_LIMIT = 100                   # backend HTTP connections per worker (keep-alive; more calls wait)
MAX_REPLY_BYTES = 4 * 1024 * 1024  # a larger reply is a proxy failure
REFRESH_RETRY_S = 60               # after a failed refresh call the connection gets this long (08 §3.3)

# Never copied from the client's request, even when listed: they describe the client's own
# hop to us, or are set by the HTTP client for the request to the backend.
_NEVER_COPIED = frozenset({"host", "content-length", "content-type", "transfer-encoding", "connection",
                           "upgrade", "keep-alive", "te", "trailer", "proxy-connection",
                           "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions"})
_UINT32_MAX = 2**32 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

Headers = tuple[tuple[str, str], ...]


class ProxyFailure(Exception):
    """Non-200, network error, timeout or an undecodable reply (08 §1.1)."""


class ConnContext(NamedTuple):
    """What a connection's later proxy calls need: its captured headers and connection meta."""

    headers: Headers
    meta: bytes | None


# -- headers ---------------------------------------------------------------------------------------


class HeaderCapture:
    """The `proxy_http_headers` of an upgrade request, taken once at upgrade time."""

    def __init__(self, names: list[str]) -> None:
        wanted: dict[str, str] = {}
        for name in names:
            if name.lower() not in _NEVER_COPIED:
                wanted.setdefault(name.lower(), name)
        self.wanted = tuple(wanted.items())          # (lower-case, as configured)

    def __call__(self, headers: dict[str, str]) -> Headers:
        """`headers` has lower-case names (the HTTP front's form)."""
        return tuple((name, headers[low]) for low, name in self.wanted if low in headers)


# -- requests --------------------------------------------------------------------------------------


def _common(client: str, binary: bool) -> dict[str, Any]:
    return {"client": client, "transport": "uni_websocket", "protocol": "json",
            "encoding": "binary" if binary else "json"}


def connect_body(client: str, request: ConnectRequest, binary: bool) -> bytes:
    """08 §2.2: common fields, name/version, the connect `data` (raw or base64), requested channels."""
    body = _common(client, binary)
    if request.name:
        body["name"] = request.name
    if request.version:
        body["version"] = request.version
    if request.data is not None:
        if binary:
            body["b64data"] = base64.b64encode(request.data).decode("ascii")
        else:
            body["data"] = orjson.Fragment(request.data)
    if request.subs:
        body["channels"] = list(request.subs)
    return orjson.dumps(body)


def refresh_body(client: str, user: str, meta: bytes | None, binary: bool) -> bytes:
    """08 §3.2: common fields, `user` always, `meta` when given."""
    body = _common(client, binary)
    body["user"] = user
    if meta is not None:
        body["meta"] = orjson.Fragment(meta)
    return orjson.dumps(body)


# -- replies ---------------------------------------------------------------------------------------


def _reply_object(raw: bytes) -> dict:
    try:
        reply = parse_json(raw)
    except (ValueError, UnicodeDecodeError):
        raise ProxyFailure("reply is not JSON") from None
    if type(reply) is not dict:
        raise ProxyFailure("reply is not a JSON object")
    return reply


def _object(value: Any, what: str) -> dict | None:
    if value is None:
        return None
    if type(value) is not dict:
        raise ProxyFailure(f"{what} is not an object")
    return value


def _int(value: Any, what: str, low: int = _INT64_MIN, high: int = _INT64_MAX) -> int:
    if value is None and low <= 0:
        return 0
    if type(value) is not int or not low <= value <= high:
        raise ProxyFailure(f"{what} is not an integer in [{low}, {high}]")
    return value


def _str(value: Any, what: str) -> str:
    if value is None:
        return ""
    if type(value) is not str:
        raise ProxyFailure(f"{what} is not a string")
    return value


def _bool(value: Any, what: str) -> bool:
    if value is None:
        return False
    if type(value) is not bool:
        raise ProxyFailure(f"{what} is not a boolean")
    return value


def _raw_or_b64(obj: dict, name: str, what: str) -> bytes | None:
    try:
        return raw_json_or_base64(obj.get(name), obj.get("b64" + name), f"{what}.b64{name}")
    except TokenError as exc:
        raise ProxyFailure(str(exc)) from None


def _disconnect(obj: dict) -> Disconnect:
    return Disconnect(_int(obj.get("code"), "disconnect.code", 1, _UINT32_MAX),
                      _str(obj.get("reason"), "disconnect.reason"),
                      _bool(obj.get("reconnect"), "disconnect.reconnect"))


def decode_connect_reply(raw: bytes) -> Disconnect | Credentials | None:
    """08 §2.3, in its order: `disconnect`, then `error`, then `result` (None: no credentials).

    A Disconnect is the connection's outcome; ProxyFailure when the reply is malformed."""
    reply = _reply_object(raw)
    disconnect = _object(reply.get("disconnect"), "disconnect")
    if disconnect is not None:
        return _disconnect(disconnect)
    error = _object(reply.get("error"), "error")
    if error is not None:
        _str(error.get("message"), "error.message")
        return connect_error_to_disconnect(_int(error.get("code"), "error.code", 0, _UINT32_MAX))
    result = _object(reply.get("result"), "result")
    if result is None:
        return None
    channels = result.get("channels")
    if channels is not None and (type(channels) is not list or not all(type(c) is str for c in channels)):
        raise ProxyFailure("result.channels is not an array of strings")
    subs = {channel: TokenSub(info=None, data=None) for channel in channels or ()}
    try:
        subs.update(subs_from_json(result.get("subs")))    # per-channel options win over a bare name
    except TokenError as exc:
        raise ProxyFailure(f"result.{exc}") from None
    data = _raw_or_b64(result, "data", "result")
    if data is not None and not _is_json(data):
        raise ProxyFailure("result.b64data is not JSON")
    try:
        meta = raw_json_or_base64(result.get("meta"), None, "result.meta")   # compact, exact big integers
    except TokenError as exc:
        raise ProxyFailure(str(exc)) from None
    return Credentials(
        user=_str(result.get("user"), "result.user"),
        expire_at=max(0, _int(result.get("expire_at"), "result.expire_at")),
        info=_raw_or_b64(result, "info", "result"),
        subs=subs,
        meta=meta,
        claims="",
        data=data,
        client_subs=False,
    )


def _is_json(raw: bytes) -> bool:
    try:
        parse_json(raw)
    except (ValueError, UnicodeDecodeError):
        return False
    return True


@dataclass(slots=True)
class Refresh:
    """A refresh reply's decision: a new expiration (and maybe info), or a Disconnect."""

    expire_at: int = 0
    info: bytes | None = None
    disconnect: Disconnect | None = None


def decode_refresh_reply(raw: bytes, now: float) -> Refresh:
    """08 §3.3: only `result` is read. Expired, absent or not in the future -> 3005."""
    result = _object(_reply_object(raw).get("result"), "result")
    if result is None or _bool(result.get("expired"), "result.expired"):
        return Refresh(disconnect=EXPIRED)
    expire_at = _int(result.get("expire_at"), "result.expire_at")
    if expire_at <= now:
        return Refresh(disconnect=EXPIRED)
    b64info = result.get("b64info")
    if b64info is not None and type(b64info) is not str:
        raise ProxyFailure("result.b64info is not a string")
    try:
        info = raw_json_or_base64(result.get("info"), b64info, "result.b64info")
    except TokenError:
        return Refresh(disconnect=INTERNAL)          # undecodable b64info: 3004, not a retry (08 §3.3)
    return Refresh(expire_at=expire_at, info=info)


# -- HTTP ------------------------------------------------------------------------------------------


class ProxyClient:
    """POSTs to the backend: one keep-alive aiohttp session per worker, at most POOL_LIMIT sockets."""

    def __init__(self, pool_limit: int = POOL_LIMIT) -> None:
        self.pool_limit = pool_limit
        self._session = None
        self._urls: dict = {}                        # endpoint -> parsed yarl.URL (parsed once)
        self._no_timeout = None                      # aiohttp's own timer off: asyncio.timeout bounds the call
        self.errors = {"connect": 0, "refresh": 0}
        self.calls = {"connect": 0, "refresh": 0}

    def _open(self):
        import aiohttp  # only workers with a proxy configured pay for the import
        connector = aiohttp.TCPConnector(limit=self.pool_limit, limit_per_host=0, keepalive_timeout=30)
        # No cookie jar: a cookie one backend reply sets must never ride along with another
        # client's call (each call carries only its own client's listed headers).
        self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
        self._no_timeout = aiohttp.ClientTimeout(total=None)
        return self._session

    async def post(self, kind: str, endpoint: str, body: bytes, headers: Headers, timeout: float) -> bytes:
        """The reply body of a 200; ProxyFailure otherwise. Never longer than `timeout` seconds."""
        import aiohttp
        import yarl  # aiohttp's URL type
        self.calls[kind] += 1
        session = self._session or self._open()
        url = self._urls.get(endpoint)
        if url is None:
            url = self._urls[endpoint] = yarl.URL(endpoint)
        send = dict(headers)
        send["Content-Type"] = "application/json"   # always, over any copied value (08 §1.1)
        try:
            # One deadline for the whole call: pool wait, connect, send, reply head and body.
            async with asyncio.timeout(timeout):
                async with session.post(url, data=body, headers=send, allow_redirects=False,
                                        timeout=self._no_timeout) as response:
                    if response.status != 200:
                        raise ProxyFailure(f"status {response.status}")
                    if (response.content_length or 0) > MAX_REPLY_BYTES:
                        raise ProxyFailure(f"reply of {response.content_length} bytes is over {MAX_REPLY_BYTES}")
                    chunks, size = [], 0
                    async for chunk in response.content.iter_any():
                        size += len(chunk)
                        if size > MAX_REPLY_BYTES:
                            raise ProxyFailure(f"reply is over {MAX_REPLY_BYTES} bytes")
                        chunks.append(chunk)
                    return b"".join(chunks)
        except ProxyFailure:
            self.errors[kind] += 1
            raise
        except TimeoutError:
            self.errors[kind] += 1
            raise ProxyFailure(f"no reply within {timeout} s") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            self.errors[kind] += 1
            raise ProxyFailure(f"{type(exc).__name__}: {exc}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class Proxy:
    """The configured connect and refresh proxies of one worker (either may be absent)."""

    def __init__(self, cfg) -> None:
        self.connect_endpoint = cfg.proxy_connect_endpoint
        self.connect_timeout = cfg.proxy_connect_timeout
        self.refresh_endpoint = cfg.proxy_refresh_endpoint
        self.refresh_timeout = cfg.proxy_refresh_timeout
        self.binary = cfg.proxy_binary_encoding
        self.include_meta = cfg.proxy_include_connection_meta
        self.capture = HeaderCapture(list(cfg.proxy_http_headers))
        self.client = ProxyClient()

    @classmethod
    def from_config(cls, cfg) -> Proxy | None:
        return cls(cfg) if cfg.proxy_connect_endpoint or cfg.proxy_refresh_endpoint else None

    async def connect(self, client: str, request: ConnectRequest, headers: Headers) -> Credentials | None:
        """The backend's credentials for a connection (None: it gave none); raises the Disconnect
        that ends the connection when it refused or could not be asked (3004)."""
        body = connect_body(client, request, self.binary)
        try:
            raw = await self.client.post("connect", self.connect_endpoint, body, headers, self.connect_timeout)
            outcome = self._decode("connect", decode_connect_reply, raw)
        except ProxyFailure as exc:
            log.warning("connect proxy call for client %s failed: %s", client, exc)
            raise INTERNAL from None
        if isinstance(outcome, Disconnect):
            raise outcome
        return outcome

    async def refresh(self, client: str, user: str, context: ConnContext | None, now: Callable[[], float]) -> Refresh:
        """The refresh decision; a failed call keeps the connection REFRESH_RETRY_S more seconds."""
        headers, meta = context if context is not None else ((), None)
        body = refresh_body(client, user, meta if self.include_meta else None, self.binary)
        try:
            raw = await self.client.post("refresh", self.refresh_endpoint, body, headers, self.refresh_timeout)
            return self._decode("refresh", decode_refresh_reply, raw, now())
        except ProxyFailure as exc:
            log.warning("refresh proxy call for client %s failed: %s; next try in %d s", client, exc,
                        REFRESH_RETRY_S)
            return Refresh(expire_at=int(now()) + REFRESH_RETRY_S)

    def _decode(self, kind: str, decode, *args):
        try:
            return decode(*args)
        except ProxyFailure:
            self.client.errors[kind] += 1       # an undecodable reply is a proxy failure too (08 §1.1)
            raise

    def stats(self) -> dict[str, float]:
        items = {}
        for kind in ("connect", "refresh"):
            items[f"uniws.proxy.{kind}_calls"] = float(self.client.calls[kind])
            items[f"uniws.proxy.{kind}_errors"] = float(self.client.errors[kind])
        return items
