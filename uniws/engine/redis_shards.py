"""Redis shards: address forms, channel -> shard selection, and the two connections of a shard.

Addresses (spec 07 §4.10): `host:port`, `redis://[user][:password]@host:port[/db]`,
`tcp://...` (same), `rediss://...` (TLS), `unix:///path/to.sock`; user/password/db in the
URL override the options; a sentinel group is a comma-separated `host:port` list. Several addresses = independent shards; a channel's shard is the jump consistent
hash of its FNV-1a 64 hash (08 §8.3).

Connections are thin asyncio protocols over hiredis's RESP parser (the parser redis-py
uses), not a client library's command objects: a command connection pipelines every
command issued in one loop turn into one write and resolves a Future per reply in order
(no task per command); the PUB/SUB connection calls back for every message straight from
`data_received`, in arrival order (no task per message).

Why not a client library's command API (python -m bench.redis_clients: one uvloop loop,
2 shared cores at load ~0.8, Redis 7.0, a 2-command Lua script, 50-byte payloads):

    EVALSHA/s               awaited one by one   100 in flight   PUB/SUB received/s
    redis-py 8.1 + hiredis             11.1k           23.8k                48.2k
    coredis 6.9                         4.9k           11.5k                  n/a
    this module (hiredis)              12.4k          217.1k               487.7k
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis

from ..errors import ApiError

log = logging.getLogger("uniws.engine.redis")

_MASK64 = (1 << 64) - 1


def fnv1a64(data: bytes) -> int:
    value = 0xCBF29CE484222325
    for byte in data:
        value = ((value ^ byte) * 0x100000001B3) & _MASK64
    return value


def jump_hash(key: int, buckets: int) -> int:
    """Jump consistent hash (08 §8.3) of a 64-bit key into [0, buckets)."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & _MASK64
        j = int((b + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return b


def shard_index(channel: str, shards: int) -> int:
    if shards == 1:
        return 0
    return jump_hash(fnv1a64(channel.encode()), shards)


# -- addresses ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RedisAddress:
    host: str = "127.0.0.1"
    port: int = 6379
    path: str = ""              # unix socket path (then host/port unused)
    user: str = ""
    password: str = ""
    db: int = 0
    tls: bool = False
    tls_skip_verify: bool = False
    # Sentinel mode: the master's host/port above are found by asking these sentinels.
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str = ""
    sentinel_user: str = ""
    sentinel_password: str = ""

    def __str__(self) -> str:
        if self.sentinels:
            where = f"sentinel {self.master_name}@" + ",".join(f"{h}:{p}" for h, p in self.sentinels)
        else:
            where = f"unix://{self.path}" if self.path else f"{self.host}:{self.port}"
        return f"{where}/{self.db}" if self.db else where


class AddressError(ValueError):
    pass


def parse_address(text: str, *, user: str = "", password: str = "", db: int = 0, tls: bool = False,
                  tls_skip_verify: bool = False) -> RedisAddress:
    """One `redis_address` entry; the option values are defaults the URL may override."""
    text = text.strip()
    if not text:
        raise AddressError("empty Redis address")
    if "://" not in text:
        text = "redis://" + text
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        raise AddressError(f"malformed Redis address {text!r}: {exc}") from None
    if parts.scheme == "unix":
        if not parts.path or parts.netloc:
            raise AddressError(f"malformed Redis unix address {text!r} (want unix:///path/to.sock)")
        return RedisAddress(path=parts.path, user=user, password=password, db=db)
    if parts.scheme == "rediss":
        tls = True
    elif parts.scheme not in ("redis", "tcp"):
        raise AddressError(f"unsupported Redis address scheme {parts.scheme!r} in {text!r}")
    try:
        port = parts.port
        host = parts.hostname
    except ValueError:
        raise AddressError(f"malformed Redis address {text!r}: bad port") from None
    if not host or port is None:
        raise AddressError(f"malformed Redis address {text!r} (want host:port)")
    if parts.username:
        user = unquote(parts.username)
    if parts.password is not None:
        password = unquote(parts.password)
    path = parts.path.strip("/")
    if path:
        if not path.isdigit():
            raise AddressError(f"malformed Redis address {text!r}: database {path!r} is not a number")
        db = int(path)
    if parts.query or parts.fragment:
        raise AddressError(f"malformed Redis address {text!r}: query strings are not supported")
    return RedisAddress(host, port, "", user, password, db, tls, tls_skip_verify)


def parse_sentinel_group(text: str, master_name: str, *, user: str = "", password: str = "", db: int = 0,
                         sentinel_user: str = "", sentinel_password: str = "", tls: bool = False,
                         tls_skip_verify: bool = False) -> RedisAddress:
    """One `redis_sentinel_address` entry: a comma-separated `host:port` list of sentinels."""
    sentinels = []
    for item in text.split(","):
        item = item.strip()
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise AddressError(f"malformed Redis Sentinel address: {item!r}")
        sentinels.append((host, int(port)))
    if not master_name:
        raise AddressError("master name must be set when using Redis Sentinel")
    return RedisAddress(user=user, password=password, db=db, tls=tls, tls_skip_verify=tls_skip_verify,
                        sentinels=tuple(sentinels), master_name=master_name,
                        sentinel_user=sentinel_user, sentinel_password=sentinel_password)


# -- connections -----------------------------------------------------------------------------

class ConnectionLost(Exception):
    pass


class _Resp(asyncio.Protocol):
    """RESP over a transport: hiredis parses, subclasses take the replies."""

    def __init__(self, on_lost: Callable[[str], None]) -> None:
        self._reader = hiredis.Reader()
        self._transport: asyncio.Transport | None = None
        self._on_lost = on_lost
        self.closed_reason: str | None = None
        self.last_rx = time.monotonic()
        self._buffered_since: float | None = None
        self.stopping = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        reader = self._reader
        reader.feed(data)
        while (reply := reader.gets()) is not False:
            self.reply(reply)

    def reply(self, reply: Any) -> None:
        raise NotImplementedError

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(f"connection lost: {exc}" if exc else "connection closed by Redis")

    def fail(self, reason: str) -> None:
        """Close for good (idempotent) and tell the owner once (unless closing on purpose)."""
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        if self._transport is not None:
            self._transport.abort()
        if not self.stopping:
            self._on_lost(reason)

    def write(self, data: bytes) -> None:
        if self.closed_reason is None:
            self._transport.write(data)

    def write_stalled(self, now: float, timeout: float) -> bool:
        """Whether bytes have waited in the send buffer for more than `timeout` seconds
        (checked by the shard's watchdog, so at its granularity)."""
        if self._transport is None or not self._transport.get_write_buffer_size():
            self._buffered_since = None
            return False
        if self._buffered_since is None:
            self._buffered_since = now
        return now - self._buffered_since > timeout


def pack(args: tuple) -> bytes:
    return hiredis.pack_command(args)


class CommandConnection(_Resp):
    """Pipelined commands: replies resolve Futures in order. `convert` maps a reply to a result."""

    def __init__(self, on_lost: Callable[[str], None]) -> None:
        super().__init__(on_lost)
        self._pending: deque[tuple[asyncio.Future, Callable | None, float, tuple]] = deque()
        self._out: list[bytes] = []
        self._loop = asyncio.get_running_loop()
        self.on_noscript: Callable[[tuple], tuple] | None = None

    def call(self, args: tuple, convert: Callable[[Any], Any] | None = None) -> asyncio.Future:
        fut = self._loop.create_future()
        if self.closed_reason is not None:
            fut.set_exception(ApiError(100))
            return fut
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(pack(args))
        self._pending.append((fut, convert, time.monotonic(), args))
        return fut

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out:
            self.write(b"".join(out))

    def oldest_age(self) -> float:
        return time.monotonic() - self._pending[0][2] if self._pending else 0.0

    def reply(self, reply: Any) -> None:
        fut, convert, _, args = self._pending.popleft()
        if isinstance(reply, hiredis.ReplyError):
            if str(reply).startswith("NOSCRIPT") and self.on_noscript is not None:
                # The script cache was flushed: run the same call as EVAL (which reloads it).
                retry = self.call(self.on_noscript(args), convert)
                retry.add_done_callback(lambda r, f=fut: _chain(r, f))
                return
            log.error("redis error reply to %s: %s", args[0], reply)
            if not fut.done():
                fut.set_exception(RedisReplyError(str(reply)))
            if str(reply).startswith("READONLY"):
                # Connected to a replica (a failover happened): reconnect, finding the master again.
                self.fail(f"server is a replica now ({reply})")
            return
        if fut.done():
            return
        if convert is None:
            fut.set_result(reply)
            return
        try:
            fut.set_result(convert(reply))
        except Exception as exc:  # noqa: BLE001 (a malformed reply fails its call, not the connection)
            fut.set_exception(exc)

    def fail(self, reason: str) -> None:
        if self.closed_reason is not None:
            return
        pending, self._pending = self._pending, deque()
        self._out = []
        for fut, *_ in pending:
            if not fut.done():
                fut.set_exception(ApiError(100))
        super().fail(reason)


def _chain(source: asyncio.Future, target: asyncio.Future) -> None:
    if target.done():
        return
    if source.exception() is not None:
        target.set_exception(source.exception())
    else:
        target.set_result(source.result())


class RedisReplyError(ApiError):
    """An error reply from Redis: API error 100 to callers; `reply` keeps Redis's text for logs."""

    __slots__ = ("reply",)

    def __init__(self, reply: str) -> None:
        super().__init__(100)
        self.reply = reply

    def __str__(self) -> str:
        return f"Redis error reply: {self.reply}"


class PubSubConnection(_Resp):
    """Subscribed-mode connection: messages go to `on_message(channel, payload)` as they arrive."""

    def __init__(self, on_lost: Callable[[str], None], on_message: Callable[[bytes, bytes], None]) -> None:
        super().__init__(on_lost)
        self._on_message = on_message
        self._loop = asyncio.get_running_loop()
        self._confirm: dict[bytes, list[asyncio.Future]] = {}

    def subscribe(self, channels: list[bytes]) -> list[asyncio.Future]:
        """Send SUBSCRIBE; the futures are done when Redis confirmed each channel."""
        futs = []
        for ch in channels:
            fut = self._loop.create_future()
            self._confirm.setdefault(ch, []).append(fut)
            futs.append(fut)
        if self.closed_reason is None:
            self.write(pack(("SUBSCRIBE", *channels)))
        else:
            for fut in futs:
                fut.set_exception(ApiError(100))
        return futs

    def unsubscribe(self, channels: list[bytes]) -> None:
        self.write(pack(("UNSUBSCRIBE", *channels)))

    def ping(self) -> None:
        self.write(b"*1\r\n$4\r\nPING\r\n")

    def reply(self, reply: Any) -> None:
        if isinstance(reply, hiredis.ReplyError):
            self.fail(f"PUB/SUB error reply: {reply}")
            return
        kind = reply[0]
        if kind == b"message":
            self._on_message(reply[1], reply[2])
        elif kind == b"subscribe":
            waiters = self._confirm.pop(reply[1], ())
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def fail(self, reason: str) -> None:
        if self.closed_reason is not None:
            return
        confirm, self._confirm = self._confirm, {}
        for waiters in confirm.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(ApiError(100))
        super().fail(reason)


def _tls_context(address: RedisAddress) -> ssl.SSLContext | None:
    """TLS (`redis_tls` or `rediss://`): the system's CAs, or no verification at all with
    `redis_tls_skip_verify`."""
    if not address.tls:
        return None
    context = ssl.create_default_context()
    if address.tls_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def open_connection(address: RedisAddress, factory: Callable[[], _Resp], timeout: float) -> _Resp:
    """Connect (with the TLS handshake when asked) within `timeout` seconds."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        if address.path:
            _, proto = await loop.create_unix_connection(factory, address.path)
        else:
            _, proto = await loop.create_connection(factory, address.host, address.port,
                                                    ssl=_tls_context(address))
    return proto


async def handshake(conn: CommandConnection, address: RedisAddress, timeout: float) -> None:
    """AUTH/SELECT on a command connection; raises RedisReplyError/TimeoutError."""
    calls = []
    if address.password:
        auth = ("AUTH", address.user, address.password) if address.user else ("AUTH", address.password)
        calls.append(conn.call(auth))
    if address.db:
        calls.append(conn.call(("SELECT", address.db)))
    calls.append(conn.call(("PING",)))
    async with asyncio.timeout(timeout):
        for call in calls:
            await call


async def find_master(address: RedisAddress, connect_timeout: float, read_timeout: float,
                      on_lost: Callable[[str], None]) -> RedisAddress:
    """Ask the sentinels, in order, where the master is; the address with its host/port."""
    problems = []
    for host, port in address.sentinels:
        sentinel = RedisAddress(host, port, user=address.sentinel_user, password=address.sentinel_password)
        conn = None
        try:
            conn = await open_connection(sentinel, lambda: CommandConnection(on_lost), connect_timeout)
            await handshake(conn, sentinel, read_timeout)
            async with asyncio.timeout(read_timeout):
                reply = await conn.call(("SENTINEL", "get-master-addr-by-name", address.master_name))
        except (OSError, TimeoutError, ApiError) as exc:
            problems.append(f"{host}:{port}: {type(exc).__name__} {exc}".strip())
            continue
        finally:
            if conn is not None:
                conn.stopping = True
                conn.fail("sentinel asked")
        if reply:
            return dataclasses.replace(address, host=reply[0].decode(), port=int(reply[1]))
        problems.append(f"{host}:{port}: does not know master {address.master_name!r}")
    raise ConnectionError("no sentinel gave the master: " + "; ".join(problems))


def server_version(info: bytes) -> tuple[int, ...]:
    for line in info.split(b"\r\n"):
        if line.startswith(b"redis_version:"):
            return tuple(int(p) for p in line.split(b":", 1)[1].split(b".") if p.isdigit())
    return ()
