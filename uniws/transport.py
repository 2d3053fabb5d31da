"""The uni_websocket endpoint: upgrade validation (spec 01 §2) and the hand-off to picows.

The HTTP front (http.py) reads the request head. For the WebSocket path it
calls `UniWebSocket.upgrade`, which answers a bad handshake itself or replaces
the front protocol with picows's `WSProtocol` on the same transport. picows is
then fed a minimal copy of the validated head (it parses it again and sends the
101, whose bytes `_SwitchingProtocols` makes) followed by whatever bytes came
after the head. picows offers no way to start a protocol past its handshake.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from urllib.parse import parse_qs

from picows.picows import WSAutoPingStrategy, WSProtocol, WSUpgradeResponseWithListener

from .globmatch import compile_glob
from .protocol import ConnectRequestError, parse_connect_request

log = logging.getLogger("uniws.transport")

_STATUS_TEXT = {400: "Bad Request", 403: "Forbidden", 405: "Method Not Allowed"}


class _BoundaryLogger:
    """The logger picows is given.

    picows would log every accepted connection at info level and create a child logger per
    connection; per-connection log lines and objects cost more than the connection itself, so
    its debug/info/warning calls are dropped and uniws logs connection events itself. Its
    error/exception calls are what happens at the boundary: a client's malformed frame
    ("WS parser error", an expected outcome: counted, logged at debug) or an exception raised
    by uniws's own listener (a bug: logged at error with its traceback and counted, so a test
    or an operator sees it instead of a bare 1011 close).
    """

    def __init__(self) -> None:
        self.listener_exceptions = 0       # uniws code raised inside a picows callback
        self.client_protocol_errors = 0    # clients that sent frames picows refused

    def isEnabledFor(self, level: int) -> bool:
        return level >= logging.ERROR

    def _ignore(self, *args, **kwargs) -> None:
        pass

    debug = info = warning = log = _ignore

    def error(self, msg: str, *args, **kwargs) -> None:
        if msg.startswith("WS parser error"):
            self.client_protocol_errors += 1
            log.debug("client frame refused: " + msg, *args)
            return
        self.listener_exceptions += 1
        log.error("picows boundary: " + msg, *args, exc_info=sys.exc_info()[0] is not None)

    exception = critical = error


BOUNDARY = _BoundaryLogger()


class _Handover:
    """The transport as picows's `connection_made` sees it.

    picows asks the socket for both addresses, its buffer sizes and its Nagle and quick-ack
    settings to format a log line, and sets TCP_NODELAY (uvloop already has) and TCP_QUICKACK
    (a one-off hint): about nine system calls per connection, 12% of a connect storm's CPU.
    This stand-in answers them from memory and passes everything else to the real transport.
    It lives only through the handshake: `Conn.on_ws_connected` gives picows the real one back.
    """

    __slots__ = ("real", "_fd")

    def __init__(self, real: asyncio.Transport, fd: int) -> None:
        self.real = real
        self._fd = fd

    def get_extra_info(self, name: str, default=None):
        if name == "socket":
            return self                       # answers fileno/getsockopt/setsockopt below
        if name in ("peername", "sockname", "ssl_object"):
            return None                       # log line only; no TLS on this listener
        return self.real.get_extra_info(name, default)

    def fileno(self) -> int:
        return self._fd

    def setsockopt(self, *args) -> None:
        pass

    def getsockopt(self, *args) -> int:
        return 0

    def __getattr__(self, name: str):
        return getattr(self.real, name)


class _SwitchingProtocols:
    """The 101 answer as picows's server handshake uses it (`status`, `headers[...] = accept`,
    `to_bytes()`): the bytes of picows's own `create_101_response()`, without its header
    multidict, HTTPStatus lookup and per-header formatting in Python (a few % of a connect)."""

    __slots__ = ("headers", "accept")
    status = 101

    def __init__(self) -> None:
        self.headers = self            # picows sets Sec-WebSocket-Accept through `headers`
        self.accept = ""

    def __setitem__(self, name: str, value: str) -> None:
        self.accept = value            # the only header picows sets on a 101

    def to_bytes(self) -> bytearray:
        return bytearray(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
                         b"Sec-WebSocket-Accept: %b\r\n\r\n" % self.accept.encode("ascii"))


def handshake_error(status: int) -> bytes:
    """Failure response of a bad upgrade (01 §2.3): status text body, nosniff, version 13."""
    text = _STATUS_TEXT[status]
    body = (text + "\n").encode()
    return (f"HTTP/1.1 {status} {text}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"X-Content-Type-Options: nosniff\r\nSec-Websocket-Version: 13\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def _has_token(value: str, token: str) -> bool:
    """Whether the comma-separated header value lists `token` (lower-case), in any case."""
    value = value.lower()
    return value == token or token in {part.strip() for part in value.split(",")}


class OriginCheck:
    """allowed_origins (01 §2.3): no Origin passes; empty list rejects; ["*"] allows all."""

    def __init__(self, patterns: list[str]) -> None:
        self.allow_all = patterns == ["*"]
        self.matchers = [] if self.allow_all else [compile_glob(p) for p in patterns]

    def allowed(self, origin: str) -> bool:
        if not origin or self.allow_all:
            return True
        origin = origin.lower()
        return any(match(origin) for match in self.matchers)


class OriginRefusalLog:
    """Info lines for refused origins, so `allowed_origins: []` (every browser refused) is
    visible: at most one line per origin per `period` seconds and `burst` lines per period in
    all, so a flood of made-up origins cannot fill the log; the next line counts the rest."""

    def __init__(self, period: float = 60.0, burst: int = 10, clock=time.monotonic) -> None:
        self.period, self.burst, self.clock = period, burst, clock
        self.last: dict[str, float] = {}           # origin -> when it was last logged
        self.window_start = -period
        self.in_window = 0
        self.unlogged = 0

    def refused(self, origin: str, allowed: list[str]) -> None:
        now = self.clock()
        if now - self.window_start >= self.period:
            self.window_start, self.in_window = now, 0
            self.last = {o: t for o, t in self.last.items() if now - t < self.period}
        seen = self.last.get(origin)
        if self.in_window >= self.burst or (seen is not None and now - seen < self.period):
            self.unlogged += 1
            return
        self.last[origin] = now
        self.in_window += 1
        shown = "".join(c if c.isprintable() else "?" for c in origin[:200])    # a header, not a log line
        fields = {"origin": shown, "allowed_origins": allowed}
        if self.unlogged:
            fields["refusals_not_logged"], self.unlogged = self.unlogged, 0
        log.info('origin refused: add it to the "allowed_origins" option to accept browsers from it',
                 extra={"fields": fields})


class UniWebSocket:
    def __init__(self, node, cfg) -> None:
        self.node = node
        self.origins = OriginCheck(list(cfg.allowed_origins))
        self.allowed_origins = list(cfg.allowed_origins)
        self.origin_log = OriginRefusalLog()
        limit = cfg.uni_websocket_message_size_limit
        # picows refuses a single frame over this before buffering it; whole-message
        # size (fragments) is checked by Conn. 2**62 stands for "no limit".
        self.max_frame_size = limit if limit >= 0 else 1 << 62
        # A uni client sends one small message: start with picows's minimum buffer.
        self.read_buffer_size = 2048
        # proxy_http_headers, taken from the upgrade request only when a proxy is configured.
        self.capture_headers = node.proxy.capture if node.proxy is not None else None

    def check(self, method: str, headers: dict[str, str]) -> int:
        """0 when the handshake is acceptable, else the HTTP status to answer (01 §2.3 order)."""
        if not _has_token(headers.get("connection", ""), "upgrade"):
            return 400
        if not _has_token(headers.get("upgrade", ""), "websocket"):
            return 400
        if method != "GET":
            return 405
        if not _has_token(headers.get("sec-websocket-version", ""), "13"):
            return 400
        origin = headers.get("origin", "")
        if not self.origins.allowed(origin):
            self.origin_log.refused(origin, self.allowed_origins)
            return 403
        if not headers.get("sec-websocket-key", "").strip():
            return 400
        return 0

    def upgrade(self, transport: asyncio.Transport, method: str, query: str,
                headers: dict[str, str], after_head: bytes) -> bool:
        """Answer or hand over the connection; True when picows now owns it."""
        params = parse_qs(query, keep_blank_values=True) if query else {}
        version = params.get("cf_protocol_version", [""])[0]
        if version not in ("", "v1", "v2"):
            transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            transport.close()
            return False
        status = self.check(method, headers)
        if status:
            transport.write(handshake_error(status))
            transport.close()
            return False
        connect_request = None
        cf_connect = params.get("cf_connect", [""])[0]
        if cf_connect and cf_connect != "null":
            try:
                connect_request = parse_connect_request(cf_connect.encode())
            except ConnectRequestError:
                body = b"invalid connect request\n"
                transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
                                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
                transport.close()
                return False
        if self.node.shutting_down:
            transport.close()
            return False
        captured = self.capture_headers(headers) if self.capture_headers is not None else ()
        resume = params.get("cf_resume", [""])[0]
        conn = self.node.new_conn(version == "v2", connect_request, captured, resume)
        answer = WSUpgradeResponseWithListener(_SwitchingProtocols(), conn)
        protocol = WSProtocol(None, None, False, lambda _request: answer, BOUNDARY, True, None,
                              False, 10.0, 10.0, WSAutoPingStrategy.PING_WHEN_IDLE, True,
                              self.max_frame_size, None, self.read_buffer_size)
        transport.set_protocol(protocol)
        protocol.connection_made(_Handover(transport, transport.get_extra_info("socket").fileno()))
        # picows parses the request again to answer it: give it the validated essentials only
        # (browsers send a dozen headers and cookies that nothing here reads).
        head = (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "
                + headers["sec-websocket-key"].strip().encode("latin-1") + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        _replay(protocol, head + after_head)
        return True


def _replay(protocol: WSProtocol, data: bytes) -> None:
    """Feed bytes already read by the front into picows's buffer, as the loop would."""
    view = memoryview(data)
    while view:
        buffer = protocol.get_buffer(len(view))
        n = min(len(buffer), len(view))
        buffer[:n] = view[:n]
        protocol.buffer_updated(n)
        view = view[n:]
