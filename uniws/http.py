"""HTTP/1.1 front on the shared port: routes each request before picows sees anything.

A connection starts with `HttpFront`. WebSocket upgrades on the uni_websocket
path are handed to transport.py (picows takes the socket over); everything
else is answered here: the server API, /health, and 404. Keep-alive,
pipelining, Content-Length and chunked bodies, `Expect: 100-continue`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass

log = logging.getLogger("uniws.http")

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024 * 1024
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 413: "Payload Too Large", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass(slots=True)
class Routes:
    """What one listener serves (external and internal listeners may differ, 07 §3)."""

    ws_path: str | None = None
    ws: object = None              # transport.UniWebSocket
    api: object = None             # api.Api
    health_path: str | None = None


class BadRequest(Exception):
    pass


def response(status: int, headers: list[tuple[str, str]], body: bytes, keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    lines.append(f"Content-Length: {len(body)}")
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _text(status: int, text: str) -> tuple[int, list[tuple[str, str]], bytes]:
    return status, [("Content-Type", "text/plain; charset=utf-8")], text.encode()


def parse_head(head: bytes) -> tuple[str, str, str, str, dict[str, str]]:
    """(method, path, query, version, headers with lower-case names; repeats joined by ', ')."""
    try:
        text = head.decode("latin-1")
        request_line, _, rest = text.partition("\r\n")
        method, target, version = request_line.split(" ")
    except ValueError:
        raise BadRequest("malformed request line") from None
    if not version.startswith("HTTP/1."):
        raise BadRequest("unsupported HTTP version")
    headers: dict[str, str] = {}
    for line in rest.split("\r\n") if rest else ():
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest("malformed header line")
        name = name.lower()
        value = value.strip()
        headers[name] = headers[name] + ", " + value if name in headers else value
    path, _, query = target.partition("?")
    return method, path, query, version, headers


def _dechunk(data: bytearray, start: int) -> tuple[bytes, int] | None:
    """Decode a chunked body starting at `start`: (body, end) or None when incomplete."""
    parts = []
    pos = start
    while True:
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            return None
        try:
            size = int(bytes(data[pos:line_end]).split(b";")[0], 16)
        except ValueError:
            raise BadRequest("bad chunk size") from None
        pos = line_end + 2
        if size == 0:
            trailer_end = data.find(b"\r\n\r\n", pos - 2)
            if trailer_end < 0:
                return None
            return b"".join(parts), trailer_end + 4
        if len(data) < pos + size + 2:
            return None
        parts.append(bytes(data[pos:pos + size]))
        pos += size + 2
        if sum(map(len, parts)) > MAX_BODY:
            raise BadRequest("body too large")


# Pipelined requests of one connection served at once; their responses still go out in order.
# API requests wait on other workers, so serving only one at a time would idle both.
MAX_PIPELINE = 16


class HttpFront(asyncio.Protocol):
    __slots__ = ("routes", "transport", "buffer", "pending", "last", "eof", "closed", "continued", "paused")

    def __init__(self, routes: Routes) -> None:
        self.routes = routes
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.pending: collections.deque = collections.deque()   # (task or response tuple, keep_alive)
        self.last = False              # a request without keep-alive was read: read no further
        self.eof = False               # the client will send nothing more (it may still read)
        self.closed = False
        self.continued = False
        self.paused = False

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for item, _ in self.pending or ():
            if isinstance(item, asyncio.Future):
                item.add_done_callback(_consume)
        self.pending = None

    def eof_received(self) -> bool:
        """A client that half-closes after its requests still gets their responses."""
        self.eof = True
        if self.closed:
            return False
        self._process_safely()
        return bool(self.pending)      # True: keep the socket open to write what is owed

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.buffer += data
        self._process_safely()
        if not self.closed and not self.paused and len(self.buffer) > MAX_BODY:
            self.paused = True                 # pipelining client: stop reading until we catch up
            self.transport.pause_reading()

    def _process_safely(self) -> None:
        try:
            self._process()
        except BadRequest as exc:
            log.info("bad HTTP request: %s", exc)
            self._reply(*_text(400, "Bad Request\n"), keep_alive=False)

    def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes, keep_alive: bool) -> None:
        """Queue a response behind the requests still being served."""
        if not keep_alive:
            self.last = True
        self.pending.append(((status, headers, body), keep_alive))
        self._write_ready()

    def _write_ready(self) -> None:
        """Write every response at the head of the queue that is ready, in request order."""
        pending = self.pending
        while pending and not self.closed:
            item, keep_alive = pending[0]
            if isinstance(item, asyncio.Future):
                if not item.done():
                    return
                try:
                    item = item.result()
                except Exception:
                    log.exception("API request failed")
                    item = _text(500, "Internal Server Error\n")
            pending.popleft()
            status, headers, body = item
            self.transport.write(response(status, headers, body, keep_alive))
            if not keep_alive:
                self.closed = True
                self.transport.close()

    def _process(self) -> None:
        while not self.last and not self.closed and self.buffer and len(self.pending) < MAX_PIPELINE:
            buffer = self.buffer
            head_end = buffer.find(b"\r\n\r\n")
            if head_end < 0:
                if len(buffer) > MAX_HEAD:
                    self._reply(*_text(431, "Request Header Fields Too Large\n"), keep_alive=False)
                return
            method, path, query, version, headers = parse_head(bytes(buffer[:head_end]))
            routes = self.routes
            if routes.ws_path is not None and path == routes.ws_path:
                if self.pending:
                    return                    # answer what came before the upgrade first
                after_head = bytes(buffer[head_end + 4:])     # a first frame may follow the head
                transport = self.transport
                # picows (or the error answer) owns the socket now. uvloop keeps a bound method
                # of this protocol for the connection's life: hold nothing from here on.
                self.closed = True
                self.buffer = self.pending = self.transport = self.routes = None
                routes.ws.upgrade(transport, method, query, headers, after_head)
                return
            body_start = head_end + 4
            if "chunked" in headers.get("transfer-encoding", "").lower():
                decoded = _dechunk(buffer, body_start)
                if decoded is None:
                    self._maybe_continue(headers)
                    return
                body, end = decoded
            else:
                try:
                    length = int(headers.get("content-length", "0"))
                except ValueError:
                    raise BadRequest("bad Content-Length") from None
                if length < 0:
                    raise BadRequest("bad Content-Length")
                if length > MAX_BODY:
                    self._reply(*_text(413, "Payload Too Large\n"), keep_alive=False)
                    return
                end = body_start + length
                if len(buffer) < end:
                    self._maybe_continue(headers)
                    return
                body = bytes(buffer[body_start:end])
            del buffer[:end]
            self.continued = False
            connection = headers.get("connection", "").lower()
            keep_alive = "close" not in connection and (version != "HTTP/1.0" or "keep-alive" in connection)
            self._route(method, path, query, headers, body, keep_alive)

    def _maybe_continue(self, headers: dict[str, str]) -> None:
        # Only for the request at the head: an interim response must not overtake the
        # responses still owed to earlier pipelined requests (asked again when they are out).
        if not self.continued and not self.pending and headers.get("expect", "").lower() == "100-continue":
            self.continued = True
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _route(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes,
               keep_alive: bool) -> None:
        routes = self.routes
        if routes.api is not None and routes.api.matches(path):
            if not keep_alive:
                self.last = True
            task = asyncio.get_running_loop().create_task(
                routes.api.handle(method, path, query, headers, body))
            self.pending.append((task, keep_alive))
            task.add_done_callback(self._api_done)
            return
        if routes.health_path is not None and path == routes.health_path:
            self._reply(200, [("Content-Type", "application/json")], b"{}", keep_alive)
            return
        self._reply(*_text(404, "404 page not found\n"), keep_alive=keep_alive)

    def _api_done(self, _task: asyncio.Task) -> None:
        self._write_ready()
        if self.closed:
            return
        if self.paused and len(self.buffer) <= MAX_BODY:
            self.paused = False
            self.transport.resume_reading()
        if self.buffer:
            self._process_safely()
        if self.eof and not self.pending and not self.closed:
            self.closed = True
            self.transport.close()


def _consume(task: asyncio.Future) -> None:
    """Retrieve the outcome of an API task whose client is gone (no "never retrieved" warning)."""
    if not task.cancelled():
        task.exception()
