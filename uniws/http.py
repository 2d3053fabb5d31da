"""HTTP/1.1 front on the shared port: routes each request before picows sees anything.

Requests are parsed by llhttp (httptools) as bytes arrive: each byte is looked at once,
however a body is chunked, and llhttp refuses ambiguous framing (signed, non-decimal or
duplicate Content-Length, Content-Length with Transfer-Encoding, bad chunk sizes). A
request is judged on its head: the API's method, key and shutdown checks and an announced
body over `http_max_request_body_size` are answered before a body byte is read, and a
chunked body is refused as soon as it passes the limit. Head, body and keep-alive idle
timeouts are per-worker deadline buckets swept by the node's tick, never a timer per
connection.

WebSocket upgrades on the uni_websocket path are handed to transport.py (picows takes the
socket over) with the bytes that followed the head. Everything else is answered here: the
server API and the other handlers of the listener (health, metrics, the admin UI; each
with the API's shape, see Routes), a static /health when no handler checks workers, and
404. Keep-alive, pipelining, `Expect: 100-continue`. Pipelined
API requests are started one after another: a request starts once the one before it has
started all its commands, so commands reach each channel's owner in connection order.
Responses go out in request order.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import time
from dataclasses import dataclass

import httptools

from .deadlines import Deadlines

log = logging.getLogger("uniws.http")

MAX_HEAD = 16 * 1024           # request line + headers; over it: 431
MAX_PIPELINE = 16              # responses owed before the connection stops reading
MAX_DISCARD = 256 * 1024       # bytes dropped after an early answer before closing hard
MAX_UPGRADE_TAIL = 64 * 1024   # bytes held after an upgrade head while earlier responses are owed
LINGER = 1.0                   # seconds a closing connection waits for the client's FIN
_REASONS = {100: "Continue", 200: "OK", 301: "Moved Permanently", 400: "Bad Request", 401: "Unauthorized",
            404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 413: "Payload Too Large",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}

# What a connection is reading now. HEAD and BODY count as incomplete requests.
_IDLE, _HEAD, _BODY, _DONE = 0, 1, 2, 3
# What the request being read is for.
_OTHER, _API, _HEALTH, _WS = 0, 1, 2, 3


@dataclass(slots=True)
class Routes:
    """What one listener serves (external and internal listeners may differ, 07 §3).

    `handlers` are asked in order after the API; each has the API's shape: `matches(path)`,
    `head_check(method, path, query, headers)` and `async handle(method, path, query,
    headers, body)` (health, metrics, the admin UI; the admin UI's subtree goes last)."""

    ws_path: str | None = None
    ws: object = None              # transport.UniWebSocket
    api: object = None             # api.Api
    health_path: str | None = None     # a static `{}` answer, when no health handler checks workers
    handlers: tuple = ()


class PathHandler:
    """A `Routes.handlers` entry for one path that answers from the node, whatever the method
    and body (health, metrics): subclasses write `respond()`."""

    def __init__(self, node, path: str, timeout: float) -> None:
        self.node = node
        self.path = path
        self.timeout = timeout          # how long the node's workers are given to answer

    def matches(self, path: str) -> bool:
        return path == self.path

    def head_check(self, method, path, query, headers):
        return None

    def body_limit(self, path: str) -> int:
        """The largest body this handler reads at `path` (the front's limit applies too)."""
        return 0                        # health and metrics read no body

    async def handle(self, method, path, query, headers, body, dispatched=None):
        if dispatched is not None:
            dispatched()
        return await self.respond()

    async def respond(self) -> tuple[int, list, bytes]:
        raise NotImplementedError


class FrontLimits:
    """A worker's HTTP limits and the deadlines of its HTTP connections (swept by the node's tick)."""

    def __init__(self, *, max_body: int = 16 << 20, head_timeout: float = 10.0, body_timeout: float = 30.0,
                 idle_timeout: float = 60.0, max_incomplete: int = 10_000) -> None:
        self.max_body = max_body
        self.head_timeout = head_timeout          # 0: no timeout
        self.body_timeout = body_timeout
        self.idle_timeout = idle_timeout
        self.max_incomplete = max_incomplete      # 0: no cap
        self.incomplete = 0                       # connections reading a request head or body now
        self.deadlines = Deadlines()              # holds front ids, not fronts: a closed one is freed
        self.fronts: dict[int, HttpFront] = {}
        self._ids = itertools.count()

    @classmethod
    def from_config(cls, cfg) -> FrontLimits:
        return cls(max_body=cfg.http_max_request_body_size, head_timeout=cfg.http_header_read_timeout,
                   body_timeout=cfg.http_body_read_timeout, idle_timeout=cfg.http_idle_timeout,
                   max_incomplete=cfg.http_max_incomplete_requests)

    def sweep(self, now: float) -> None:
        """Act on the deadlines that are due (`now` from time.monotonic)."""
        fronts = self.fronts
        for front_id in self.deadlines.pop_due(now):
            front = fronts.get(front_id)
            if front is not None:
                front.deadline_due(now)


def response(status: int, headers: list[tuple[str, str]], body: bytes, keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    lines.append(f"Content-Length: {len(body)}")
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _text(status: int, text: str) -> tuple[int, list[tuple[str, str]], bytes]:
    return status, [("Content-Type", "text/plain; charset=utf-8")], text.encode()


def split_target(url: bytes) -> tuple[str, str]:
    """(path, query) of a request target: origin form, or absolute form (RFC 9112 §3.2.2)."""
    if not url.startswith(b"/"):
        try:
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            raise _Refused(400, "malformed request target") from None
        return (parsed.path or b"/").decode("latin-1"), (parsed.query or b"").decode("latin-1")
    path, _, query = url.partition(b"?")
    return path.decode("latin-1"), query.partition(b"#")[0].decode("latin-1")


class _Refused(Exception):
    """Raised inside a parser callback: answer `status` and stop reading requests."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


class _ApiCall:
    """One API (or other handler's) request of a connection: waits for its turn, then runs as a task."""

    __slots__ = ("front", "handler", "args", "task")

    def __init__(self, front: HttpFront, handler, args: tuple) -> None:
        self.front = front
        self.handler = handler
        self.args = args
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        method, path, query, headers, body = self.args
        self.args = None
        self.task = asyncio.get_running_loop().create_task(
            self.handler.handle(method, path, query, headers, body, dispatched=self.dispatched))
        self.task.add_done_callback(self._done)

    def dispatched(self) -> None:
        """Every command of the request has been started: the next request may start."""
        self.front.next_call(self)

    def _done(self, task: asyncio.Task) -> None:
        front = self.front
        front.next_call(self)
        if front.closed:
            if not task.cancelled():
                task.exception()        # retrieved: no "never retrieved" warning
            return
        front.api_done()


class HttpFront(asyncio.Protocol):
    __slots__ = ("routes", "limits", "transport", "parser", "id", "phase", "counted", "began",
                 "url", "request", "raw_headers", "headers", "head_size", "head_raw", "kind", "handler", "body",
                 "body_size", "max_body", "pending", "calls", "dispatching", "last", "eof", "closed", "continue_owed",
                 "paused", "deadline", "wake", "upgrade", "upgrade_tail", "discarded", "lingering")

    def __init__(self, routes: Routes, limits: FrontLimits | None = None) -> None:
        self.routes = routes
        self.limits = limits if limits is not None else FrontLimits()
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpRequestParser | None = None
        self.id = -1
        self.phase = _IDLE
        self.counted = False           # counted in limits.incomplete
        self.began = False             # a byte of the current request was parsed
        self.url = b""
        self.request: tuple[str, str, str] = ("", "", "")     # method, path, query
        self.raw_headers: list[bytes] = []       # name, value, name, value... as llhttp gives them
        self.headers: dict[str, str] = {}
        self.head_size = 0             # request line and header bytes seen by the callbacks
        self.head_raw = 0              # bytes fed since the head began in an earlier read
        self.kind = _OTHER
        self.handler = None            # what answers an _API request
        self.body: list[bytes] | None = None
        self.body_size = 0
        self.max_body = self.limits.max_body     # of the current request: a handler may ask for less
        self.pending: collections.deque = collections.deque()   # [response or _ApiCall, keep_alive]
        self.calls: collections.deque = collections.deque()     # _ApiCalls not started yet
        self.dispatching: _ApiCall | None = None
        self.last = False              # no request after the current one is read
        self.eof = False               # the client will send nothing more (it may still read)
        self.closed = False
        self.continue_owed = False     # 100 Continue once the responses before it are out
        self.paused = False
        self.deadline = 0.0            # time.monotonic() when the current wait ends; 0: none
        self.wake = 0                  # second of this front's live deadline entry; 0: none
        self.upgrade: tuple | None = None        # (method, query, headers) of a WebSocket hand-off
        self.upgrade_tail = bytearray()
        self.discarded = 0
        self.lingering = False

    # -- connection events -------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        limits = self.limits
        if limits.max_incomplete and limits.incomplete >= limits.max_incomplete:
            log.debug("refusing a connection: %d requests are being read", limits.incomplete)
            self.closed = True
            transport.write(response(*_text(503, "Service Unavailable\n"), keep_alive=False))
            transport.close()
            return
        self.id = next(limits._ids)
        limits.fronts[self.id] = self
        self.parser = httptools.HttpRequestParser(self)
        self._set_phase(_HEAD)
        self._arm(limits.head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        for item, _ in self.pending or ():      # None once handed over (a refused upgrade ends here)
            if type(item) is _ApiCall and item.task is not None and item.task.done() and not item.task.cancelled():
                item.task.exception()
        if self.pending:
            self.pending.clear()
        # Requests read in full still run (their client may have sent and left); nothing is written.

    def eof_received(self) -> bool:
        """A client that half-closes after its requests still gets their responses."""
        self.eof = True
        if self.closed or self.lingering:
            return False
        return bool(self.pending)      # True: keep the socket open to write what is owed

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        parser = self.parser
        if parser is None:
            if self.upgrade is not None:
                self.upgrade_tail += data
                if len(self.upgrade_tail) > MAX_UPGRADE_TAIL:
                    self._abort("too much data before the WebSocket hand-off")
            else:
                self.discarded += len(data)
                if self.discarded > MAX_DISCARD:
                    self._abort("client kept sending after its answer")
            return
        if self.phase == _HEAD:
            self.head_raw += len(data)
        self._feed(data)
        if self.closed:
            return
        if self.phase == _HEAD and self.head_raw > MAX_HEAD:
            self._refuse(431, "Request Header Fields Too Large", "request head too large")
        if self.last:
            self.parser = None         # read no further request: later bytes are discarded
        if self.upgrade is not None:
            self._hand_off()
        elif not self.paused and len(self.pending) >= MAX_PIPELINE:
            self.paused = True         # pipelining client: stop reading until we catch up
            self.transport.pause_reading()

    def _feed(self, data: bytes) -> None:
        while data and self.parser is not None:
            parser = self.parser
            try:
                parser.feed_data(data)
                return
            except httptools.HttpParserUpgrade as exc:
                data = data[exc.args[0]:]
                if self.kind == _WS:
                    self.parser = None
                    self.upgrade_tail += data
                    return
                # An upgrade asked of another path was answered as a plain (body-less) request.
                self.parser = httptools.HttpRequestParser(self)
            except httptools.HttpParserError as exc:
                if self.parser is parser and not self.last:
                    refused = exc.__context__
                    if isinstance(refused, _Refused):
                        self._refuse(refused.status, _REASONS[refused.status], str(refused))
                    else:
                        self._refuse(400, "Bad Request", f"malformed request: {exc}")
                return

    # -- parser callbacks (llhttp) ---------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.last:
            raise _Refused(400, "request after the last one")
        if self.phase == _IDLE:
            self._set_phase(_HEAD)
            self._arm(self.limits.head_timeout)
        self.began = True
        self.url = b""
        self.raw_headers = []
        self.head_size = self.head_raw = 0
        self.kind = _OTHER
        self.body = None
        self.body_size = 0
        self.max_body = self.limits.max_body

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_size += len(url)
        if self.head_size > MAX_HEAD:
            raise _Refused(431, "request head too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4
        if self.phase != _HEAD:        # a trailer of a chunked body: counted, then dropped
            self._count_body(len(name) + len(value))
            return
        if self.head_size > MAX_HEAD:
            raise _Refused(431, "request head too large")
        self.raw_headers += (name, value)

    def _header_dict(self) -> dict[str, str]:
        """Header names lower-case, values stripped, repeats joined by ", " (decoded at once:
        a browser's dozen headers cost a few C calls, not a dozen Python steps)."""
        raw = self.raw_headers
        if not raw:
            return {}
        text = b"\0".join(raw).decode("latin-1")      # llhttp refuses NUL inside a header
        if " \0" in text or "\t\0" in text or text[-1] in " \t":
            parts = [part.strip(" \t") for part in text.split("\0")]
        else:
            parts = text.split("\0")
        names = "\0".join(parts[0::2]).lower().split("\0")
        values = parts[1::2]
        headers = dict(zip(names, values))
        if len(headers) < len(names):
            headers = {}
            for name, value in zip(names, values):
                headers[name] = headers[name] + ", " + value if name in headers else value
        return headers

    def on_headers_complete(self) -> None:
        parser = self.parser
        if parser.get_http_version() not in ("1.1", "1.0"):
            raise _Refused(400, "unsupported HTTP version")
        self.headers = headers = self._header_dict()
        path, query = split_target(self.url)
        method = parser.get_method().decode("latin-1")
        chunked = "transfer-encoding" in headers
        if chunked and headers["transfer-encoding"].lower() != "chunked":
            raise _Refused(400, "unsupported Transfer-Encoding")
        length = int(headers.get("content-length") or 0)    # llhttp checked it is plain digits
        routes = self.routes
        if parser.should_upgrade() or path == routes.ws_path:
            if path == routes.ws_path:
                self.kind = _WS
                self.upgrade_tail = bytearray()
            elif chunked or length:
                raise _Refused(400, "upgrade request with a body")
            # otherwise answered as a plain request (a client asking for h2c, say)
        if self.kind != _WS:
            handler = self._handler_for(path)
            if handler is not None:
                rejection = handler.head_check(method, path, query, headers)
                if rejection is not None:
                    self._set_phase(_DONE)
                    self._queue(rejection, keep_alive=False)
                    raise _Refused(rejection[0], "refused on its head") from None
                self.kind = _API
                self.handler = handler
                self.body = []
                self.max_body = min(self.max_body, handler.body_limit(path))
            elif routes.health_path is not None and path == routes.health_path:
                self.kind = _HEALTH
        if length > self.max_body:
            raise _Refused(413, f"announced body of {length} bytes")
        self.request = (method, path, query)
        self._set_phase(_BODY)
        self._arm(self.limits.body_timeout)
        if (chunked or length) and headers.get("expect", "").lower() == "100-continue":
            if self.pending:
                self.continue_owed = True      # after the responses owed to earlier requests
            else:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _handler_for(self, path: str):
        routes = self.routes
        api = routes.api
        if api is not None and api.matches(path):
            return api
        for handler in routes.handlers:
            if handler.matches(path):
                return handler
        return None

    def on_body(self, data: bytes) -> None:
        self._count_body(len(data))
        if self.body is not None:
            self.body.append(data)

    def _count_body(self, n: int) -> None:
        self.body_size += n
        if self.body_size > self.max_body:
            raise _Refused(413, f"body over {self.max_body} bytes")

    def on_message_complete(self) -> None:
        keep_alive = self.parser.should_keep_alive()
        if not keep_alive:
            self.last = True
        self.continue_owed = False
        self.began = False
        self._set_phase(_IDLE)
        method, path, query = self.request
        kind = self.kind
        if kind == _WS:
            self.last = True
            self.upgrade = (method, query, self.headers)
            return
        if kind == _API:
            call = _ApiCall(self, self.handler, (method, path, query, self.headers, b"".join(self.body)))
            self.body = self.handler = None
            self.pending.append([call, keep_alive])
            self.calls.append(call)
            if self.dispatching is None:
                self._start_next()
        elif kind == _HEALTH:
            self._queue((200, [("Content-Type", "application/json")], b"{}"), keep_alive)
        else:
            self._queue(_text(404, "404 page not found\n"), keep_alive)
        if not self.closed and not self.lingering:
            # Idle once answered; while the server owes responses the client has no deadline.
            self._arm(0 if self.pending else self.limits.idle_timeout)

    # -- answering -------------------------------------------------------------------------

    def _queue(self, item: tuple, keep_alive: bool) -> None:
        """A response behind the ones still owed to earlier requests."""
        self.pending.append([item, keep_alive])
        self._write_ready()

    def _refuse(self, status: int, reason: str, why: str) -> None:
        """Answer `status` after what is owed, then close: nothing more is read."""
        self.last = True
        self.parser = None
        self.continue_owed = False
        self.deadline = 0.0            # what is left to wait for is the server's own answers
        if self.phase == _DONE:
            return                     # already answered (the API refused the head)
        log.info("refused HTTP request (%d): %s", status, why)
        self._set_phase(_DONE)
        self._queue(_text(status, reason + "\n"), keep_alive=False)

    def _write_ready(self) -> None:
        """Write every response at the head of the queue that is ready, in request order."""
        pending = self.pending
        transport = self.transport
        while pending and not self.closed and not self.lingering:
            item, keep_alive = pending[0]
            if type(item) is _ApiCall:
                task = item.task
                if task is None or not task.done():
                    return
                try:
                    item = task.result()
                except Exception:
                    log.exception("API request failed")
                    item = _text(500, "Internal Server Error\n")
            pending.popleft()
            transport.write(response(*item, keep_alive))
            if not keep_alive:
                pending.clear()
                self._close_gracefully()
                return
        if self.closed or self.lingering:
            return
        if self.paused and len(pending) < MAX_PIPELINE:
            self.paused = False
            transport.resume_reading()
        if pending:
            return
        if self.continue_owed:
            self.continue_owed = False
            transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self.eof:
            self._abort(None)          # everything owed is written; nothing more can arrive
        elif self.phase == _IDLE:
            self._arm(self.limits.idle_timeout)

    def api_done(self) -> None:
        self._write_ready()
        if self.upgrade is not None and not self.closed:
            self._hand_off()

    # -- pipelined API requests: one starts when the one before it has started its commands --

    def next_call(self, call: _ApiCall) -> None:
        if self.dispatching is call:
            self.dispatching = None
            self._start_next()

    def _start_next(self) -> None:
        if self.calls and self.dispatching is None:
            call = self.calls.popleft()
            self.dispatching = call
            call.start()

    # -- WebSocket hand-off ------------------------------------------------------------------

    def _hand_off(self) -> None:
        if self.pending:
            return                     # answer what came before the upgrade first
        if self.eof:
            self._abort(None)
            return
        method, query, headers = self.upgrade
        tail = bytes(self.upgrade_tail)
        transport = self.transport
        ws = self.routes.ws
        # picows (or the error answer) owns the socket now. uvloop keeps a bound method
        # of this protocol for the connection's life: hold nothing from here on.
        self._forget()
        self.transport = self.routes = self.upgrade = self.upgrade_tail = self.headers = None
        self.pending = self.calls = self.raw_headers = self.url = self.request = None
        ws.upgrade(transport, method, query, headers, tail)

    # -- deadlines and closing ---------------------------------------------------------------

    def _set_phase(self, phase: int) -> None:
        self.phase = phase
        counted = phase == _HEAD or phase == _BODY
        if counted != self.counted:
            self.counted = counted
            self.limits.incomplete += 1 if counted else -1

    def _arm(self, timeout: float) -> None:
        """The current wait ends `timeout` seconds from now (0: it has no end)."""
        if not timeout:
            self.deadline = 0.0
            return
        self.deadline = deadline = time.monotonic() + timeout
        second = math.ceil(deadline)
        if not self.wake or second < self.wake:     # a later entry re-arms itself when it fires
            self.wake = second
            self.limits.deadlines.add(second, self.id)

    def deadline_due(self, now: float) -> None:
        if self.closed or self.wake > now:
            return                     # a later entry of this front is the live one
        self.wake = 0
        deadline = self.deadline
        if not deadline:
            return
        if deadline > now:
            self.wake = math.ceil(deadline)
            self.limits.deadlines.add(self.wake, self.id)
            return
        self.deadline = 0.0
        if self.phase == _IDLE or self.lingering or not (self.began or self.phase == _BODY):
            self._abort(None)          # nothing of a request: close without an answer
        elif self.phase == _HEAD:
            self._refuse(408, "Request Timeout", "request head not received in time")
        elif self.phase == _BODY:
            self._refuse(408, "Request Timeout", "request body not received in time")

    def _close_gracefully(self) -> None:
        """Close after the last response: half-close first, so unread client bytes do not
        turn into a reset that destroys the response before the client reads it."""
        self.last = True
        self.parser = None
        self._set_phase(_DONE)
        if self.eof:
            self._abort(None)
            return
        self.lingering = True
        if self.paused:                # read again: the client's FIN ends the linger early
            self.paused = False
            self.transport.resume_reading()
        self.transport.write_eof()
        self._arm(LINGER)

    def _abort(self, why: str | None) -> None:
        if why:
            log.info("closing HTTP connection: %s", why)
        transport = self.transport
        self._forget()
        transport.close()

    def _forget(self) -> None:
        """Closed or handed over: leave the worker's registry and counts."""
        if self.closed:
            return
        self.closed = True
        self._set_phase(_DONE)
        self.parser = None
        self.limits.fronts.pop(self.id, None)
