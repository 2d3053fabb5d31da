"""Redis engine (spec 08 §8.3, §8.4): history, offsets and presence in Redis, delivery
between nodes over Redis PUB/SUB, node registry and surveys over a control channel.

Each shard (one `redis_address` entry) has one pipelined command connection and one
PUB/SUB connection (redis_shards.py). A channel lives on one shard (jump hash); control
messages go round-robin over shards and every control-taking engine listens on all.

Faults: a shard that cannot be reached is retried in the background with a doubling
delay (capped by `reconnect_max_delay`); meanwhile `healthy()` names it and every
operation touching it fails at once with ApiError(100). When a shard's connections come
back, every channel with references is subscribed again and THEN `handler.handle_gap`
gets the channels whose messages may have been lost.

Control messages are JSON (`{"uid","m",...}`), not Centrifugo's protobuf Command: uniws
nodes cannot share a Redis with Centrifugo nodes (publications/history are protobuf and
would interoperate; control would not).

Measured (python -m bench.redis_engine, one uvloop loop, 2 shared cores, Redis 7.0):
~80k publications/s with history (Redis CPU ~0.8 s per 100k: the Lua script), ~320k/s
without history, ~550k PUB/SUB messages/s received. Why hiredis directly rather than
redis-py's or coredis's command API: see redis_shards.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from ..channels import ChannelOptions
from ..errors import ApiError
from . import redis_codec as rc
from . import redis_scripts
from .base import EngineHandler, Publication
from .redis_shards import (
    CommandConnection,
    PubSubConnection,
    RedisAddress,
    RedisReplyError,
    find_master,
    handshake,
    open_connection,
    pack,
    server_version,
    shard_index,
)

log = logging.getLogger("uniws.engine.redis")

_SHAS = {name: hashlib.sha1(body.encode()).hexdigest() for name, body in redis_scripts.ALL.items()}
_BODY_BY_SHA = {_SHAS[name]: body for name, body in redis_scripts.ALL.items()}
MIN_VERSION = (5, 0, 1)


def _eval_instead(args: tuple) -> tuple:
    """EVALSHA args -> EVAL args (NOSCRIPT fallback)."""
    return ("EVAL", _BODY_BY_SHA[args[1]], *args[2:])


def _epoch_now() -> str:
    """Decimal Unix time (all digits, 08 §8.3) in microseconds, not seconds: a Redis that restarts
    empty within the second would otherwise hand out the epoch it had, with offsets from 1 again,
    and a client could not tell the streams apart."""
    return str(time.time_ns() // 1000)


def _within(fut: asyncio.Future, timeout: float) -> asyncio.Future:
    """`fut`'s outcome, or TimeoutError after `timeout` (`fut` itself is left running, as with
    shield). Not asyncio.timeout: engine calls also run eagerly, outside any task (uniws/eager.py
    runs API commands and client connects so), where asyncio.timeout raises RuntimeError."""
    if fut.done():
        return fut
    loop = asyncio.get_running_loop()
    outer = loop.create_future()

    def settle(done: asyncio.Future) -> None:
        if outer.done():
            return
        if done.cancelled():
            outer.cancel()
        elif done.exception() is not None:
            outer.set_exception(done.exception())
        else:
            outer.set_result(done.result())

    def expire() -> None:
        if not outer.done():
            outer.set_exception(TimeoutError())

    fut.add_done_callback(settle)
    timer = loop.call_later(timeout, expire)
    outer.add_done_callback(lambda _: timer.cancel())
    return outer


class Shard:
    """One Redis server: its connections, state and reconnection loop."""

    def __init__(self, engine: RedisEngine, index: int, address: RedisAddress) -> None:
        self.engine = engine
        self.index = index
        self.address = address
        self.cmd: CommandConnection | None = None
        self.sub: PubSubConnection | None = None
        self.down_reason: str | None = "not connected yet"
        self.subscribed: dict[str, asyncio.Future] = {}   # broker subscriptions (client channels)
        self.was_up = False
        self.stopping = False
        self._lost = asyncio.Event()
        self.first_attempt = asyncio.Event()     # set once the first connection attempt ended
        self._task: asyncio.Task | None = None

    @property
    def up(self) -> bool:
        return self.down_reason is None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self.stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._close("engine closed")

    def call(self, args: tuple, convert: Callable[[Any], Any] | None = None) -> asyncio.Future:
        """A command, failing with ApiError(100) at once when the shard is down."""
        if self.down_reason is not None or self.cmd is None:
            fut = asyncio.get_running_loop().create_future()
            fut.set_exception(ApiError(100))
            return fut
        return self.cmd.call(args, convert)

    def script(self, name: str, keys: tuple, argv: tuple, convert: Callable[[Any], Any] | None = None):
        return self.call(("EVALSHA", _SHAS[name], len(keys), *keys, *argv), convert)

    def _on_lost(self, reason: str) -> None:
        if self.down_reason is None:
            self.down_reason = reason
            if not self.stopping:
                log.error("redis %s: %s", self.address, reason)
        self._lost.set()

    def _close(self, reason: str) -> None:
        for conn in (self.cmd, self.sub):
            if conn is not None:
                conn.fail(reason)

    async def _connect(self) -> list[str]:
        """Open both connections, load scripts, subscribe; returns channels re-subscribed."""
        e = self.engine
        self._lost = asyncio.Event()
        address = self.address
        if address.sentinels:
            address = await find_master(address, e.connect_timeout, e.read_timeout, lambda reason: None)
        cmd = await open_connection(address, lambda: CommandConnection(self._on_lost), e.connect_timeout)
        cmd.on_noscript = _eval_instead
        self.cmd = cmd
        await handshake(cmd, address, e.read_timeout)
        async with asyncio.timeout(e.read_timeout):
            if address.sentinels:
                role = await cmd.call(("ROLE",))
                if role[0] != b"master":
                    raise ConnectionError(f"{address.host}:{address.port} is a {role[0].decode()}, not the master")
            info = await cmd.call(("INFO", "server"))
            version = server_version(info)
            if version < MIN_VERSION:
                raise RuntimeError(f"Redis >= 5.0.1 required (streams), server is "
                                   f"{'.'.join(map(str, version)) or 'unknown'}")
            for body in redis_scripts.ALL.values():
                await cmd.call(("SCRIPT", "LOAD", body))
        sub = await open_connection(address, lambda: PubSubConnection(self._on_lost, e._on_message),
                                    e.connect_timeout)
        self.sub = sub
        await handshake_pubsub(sub, address, e.read_timeout)
        names = list(e._control_channels()) if e.control else []
        channels = [ch for ch in e._refs if e._shard_of(ch) is self]
        names += [e._client_key(ch) for ch in channels]
        if names:
            futs = sub.subscribe(names)
            async with asyncio.timeout(e.read_timeout):
                await asyncio.gather(*futs)
        self.subscribed = {}
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        for ch in channels:
            self.subscribed[ch] = done
        if self._lost.is_set():
            raise ConnectionError("connection lost during setup")
        return channels

    async def _run(self) -> None:
        e = self.engine
        delay = e.reconnect_min_delay
        while True:
            try:
                channels = await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 (any failure to connect is retried; reported below)
                reason = f"cannot connect: {type(exc).__name__}: {exc}" if str(exc) else \
                    f"cannot connect: {type(exc).__name__}"
                if self.down_reason != reason:
                    log.error("redis %s: %s; retrying in the background", self.address, reason)
                self.down_reason = reason
                self._close(reason)
                self.first_attempt.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, e.reconnect_max_delay)
                continue
            delay = e.reconnect_min_delay
            regained = self.was_up
            self.was_up = True
            self.down_reason = None
            if regained:
                log.warning("redis %s: reconnected", self.address)
            else:
                log.info("redis %s: connected", self.address)
            if regained and channels:
                e.handler.handle_gap(channels)
            e._shard_up(self)
            self.first_attempt.set()
            await self._lost.wait()
            self._close(self.down_reason or "connection lost")
            self.subscribed = {}

    def watchdog(self, now: float) -> None:
        """Fail the shard when a reply or PUB/SUB traffic is overdue (every wait has a timeout)."""
        if self.down_reason is not None:
            return
        timeout, write_timeout = self.engine.read_timeout, self.engine.write_timeout
        for conn in (self.cmd, self.sub):
            if conn is not None and conn.write_stalled(now, write_timeout):
                conn.fail(f"writes stalled for {write_timeout:g}s (redis_write_timeout)")
                return
        if self.cmd is not None and self.cmd.oldest_age() > timeout:
            self.cmd.fail(f"no reply within {timeout:g}s (redis_read_timeout)")
        elif self.sub is not None:
            if now - self.sub.last_rx > timeout:
                self.sub.fail(f"PUB/SUB connection silent for {timeout:g}s (redis_read_timeout)")
            else:
                self.sub.ping()


async def handshake_pubsub(sub: PubSubConnection, address: RedisAddress, timeout: float) -> None:
    """AUTH/SELECT on the PUB/SUB connection before it enters subscribed mode."""
    # The PUB/SUB protocol takes only subscription replies (an error reply fails it):
    # send AUTH/SELECT, then a confirmed dummy SUBSCRIBE proves they were accepted.
    if address.password:
        sub.write(pack(("AUTH", address.user, address.password) if address.user else ("AUTH", address.password)))
    if address.db:
        sub.write(pack(("SELECT", address.db)))
    async with asyncio.timeout(timeout):
        await sub.subscribe([b"__uniws_handshake__"])[0]
    sub.unsubscribe([b"__uniws_handshake__"])


class RedisEngine:
    def __init__(self, handler: EngineHandler, addresses: list[RedisAddress], *, node_uid: str,
                 control: bool = True, prefix: str = "centrifugo", history_meta_ttl: float = 0.0,
                 presence_ttl: float = 60.0, presence_update_interval: float = 27.0,
                 connect_timeout: float = 1.0, read_timeout: float = 5.0, write_timeout: float = 1.0,
                 reconnect_min_delay: float = 0.05, reconnect_max_delay: float = 5.0,
                 unsubscribe_delay: float = 1.0, node_interval: float = 3.0, node_stale: float = 7.0,
                 survey_timeout: float = 10.0, ping_interval: float = 1.0) -> None:
        if not addresses:
            raise ValueError("the Redis engine needs at least one address")
        self.handler = handler
        self.node_uid = node_uid
        self.control = control
        self.prefix = prefix
        self.meta_ttl = int(history_meta_ttl)
        self.presence_ttl = int(presence_ttl) or 60
        self.presence_update_interval = presence_update_interval
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.reconnect_min_delay = reconnect_min_delay
        self.reconnect_max_delay = reconnect_max_delay
        self.unsubscribe_delay = unsubscribe_delay
        self.node_interval = node_interval
        self.node_stale = node_stale
        self.survey_timeout = survey_timeout
        self.ping_interval = ping_interval
        self.addresses = addresses
        self.shards: list[Shard] = []
        p = prefix.encode()
        self._client_prefix = p + b".client."
        self._control_key = p + b".control"
        self._node_key = p + b".node." + node_uid.encode()
        self._ping_key = p + b".ping"
        self._refs: dict[str, int] = {}
        self._unsub_at: dict[str, float] = {}           # channel -> monotonic time of its last release
        self._unsub_timer: asyncio.TimerHandle | None = None
        self._presence: dict[tuple[str, str], bytes] = {}   # this engine's entries, refreshed
        self._registry: dict[str, tuple[dict, float]] = {}
        self._surveys: dict[int, tuple[asyncio.Future, list, int]] = {}
        self._survey_ids = itertools.count(1)
        self._rr = itertools.count()
        self._tasks: list[asyncio.Task] = []
        self._survey_tasks: set[asyncio.Task] = set()
        self._closed = False

    @classmethod
    def from_config(cls, config: Any, handler: EngineHandler, *, node_uid: str, control: bool = True,
                    **kwargs: Any) -> RedisEngine:
        from ..config import redis_addresses
        return cls(handler, redis_addresses(config), node_uid=node_uid, control=control,
                   prefix=config.redis_prefix, history_meta_ttl=config.history_meta_ttl,
                   presence_ttl=config.presence_ttl,
                   presence_update_interval=config.client_presence_update_interval,
                   connect_timeout=config.redis_connect_timeout, read_timeout=config.redis_read_timeout,
                   write_timeout=config.redis_write_timeout,
                   reconnect_max_delay=config.redis_reconnect_max_delay, **kwargs)

    def set_handler(self, handler: EngineHandler) -> None:
        self.handler = handler

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect every shard; returns after the first attempt whatever its outcome (a shard
        that is down keeps being retried in the background and `healthy()` says why)."""
        self.shards = [Shard(self, i, a) for i, a in enumerate(self.addresses)]
        waits = []
        for shard in self.shards:
            shard.start()
            waits.append(self._first_attempt(shard))
        await asyncio.gather(*waits)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._tick()))
        self._tasks.append(loop.create_task(self._refresh_presence()))

    async def _first_attempt(self, shard: Shard) -> None:
        # Bounded anyway: every step of an attempt has its own timeout.
        try:
            async with asyncio.timeout(self.connect_timeout * 2 + self.read_timeout * 4):
                await shard.first_attempt.wait()
        except TimeoutError:
            pass

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in (*self._tasks, *self._survey_tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._survey_tasks, return_exceptions=True)
        if self.control and any(s.up for s in self.shards):
            try:
                async with asyncio.timeout(self.read_timeout):
                    await self._send_control({"m": "shutdown"})
            except (ApiError, TimeoutError):
                pass
        for shard in self.shards:
            await shard.stop()
        if self._unsub_timer is not None:
            self._unsub_timer.cancel()
        for fut, _, _ in self._surveys.values():
            if not fut.done():
                fut.set_exception(ApiError(100))

    def healthy(self) -> str | None:
        for shard in self.shards or ():
            if shard.down_reason is not None:
                return f"redis {shard.address}: {shard.down_reason}"
        if not self.shards:
            return "redis engine not started"
        return None

    # -- keys -------------------------------------------------------------------------------

    def _shard_of(self, channel: str) -> Shard:
        return self.shards[shard_index(channel, len(self.shards))]

    def _client_key(self, channel: str) -> bytes:
        return self._client_prefix + channel.encode()

    def _key(self, kind: str, channel: str) -> str:
        return f"{self.prefix}.{kind}.{channel}"

    def _control_channels(self):
        return (self._control_key, self._node_key, self._ping_key)

    # -- publications -----------------------------------------------------------------------

    def publish(self, channel: str, data: bytes, opts: ChannelOptions, *, skip_history: bool = False,
                tags: dict[str, str] | None = None) -> asyncio.Future:
        payload = rc.encode_publication(data, 0, tags)
        shard = self._shard_of(channel)
        if opts.history_enabled and not skip_history:
            return shard.script(
                "publish",
                (self._key("stream", channel), self._key("stream.meta", channel), self._client_key(channel)),
                (payload, opts.history_size, int(opts.history_ttl), self.meta_ttl, _epoch_now()),
                _position)
        return shard.call(("PUBLISH", self._client_key(channel), payload), _no_position)

    def publish_join_leave(self, channel: str, join: bool, info: bytes) -> None:
        try:
            payload = (rc.JOIN_PREFIX if join else rc.LEAVE_PREFIX) + rc.encode_client_info(info)
        except rc.PayloadError as exc:
            log.error("join/leave of %r not published: %s", channel, exc)
            return
        fut = self._shard_of(channel).call(("PUBLISH", self._client_key(channel), payload))
        fut.add_done_callback(_consume)

    def _on_message(self, channel: bytes, payload: bytes) -> None:
        """Every PUB/SUB message, straight from data_received, in arrival order."""
        try:
            if channel.startswith(self._client_prefix):
                name = channel[len(self._client_prefix):].decode()
                kind, value, epoch = rc.parse_message(payload)
                if kind == "pub":
                    self.handler.handle_publication(name, value, epoch)
                else:
                    self.handler.handle_join_leave(name, kind == "join", value)
            elif channel != self._ping_key:
                self._on_control(payload)
        except (rc.PayloadError, UnicodeDecodeError) as exc:
            log.error("undecodable message on %r dropped: %s", channel, exc)
        except Exception:
            # A handler bug must not kill the shard's PUB/SUB connection (and every channel on it).
            log.exception("handling a message of %r failed", channel)

    # -- subscriptions ----------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        self._refs[channel] = self._refs.get(channel, 0) + 1
        self._unsub_at.pop(channel, None)
        shard = self._shard_of(channel)
        fut = shard.subscribed.get(channel)
        if fut is None:
            if not shard.up or shard.sub is None:
                self._release(channel)
                raise ApiError(100)
            fut = shard.sub.subscribe([self._client_key(channel)])[0]
            shard.subscribed[channel] = fut
        try:
            await _within(fut, self.read_timeout)
        except (ApiError, TimeoutError):
            if shard.subscribed.get(channel) is fut:
                del shard.subscribed[channel]
            self._release(channel)
            raise ApiError(100) from None

    def _release(self, channel: str) -> None:
        left = self._refs.get(channel, 0) - 1
        if left > 0:
            self._refs[channel] = left
        else:
            self._refs.pop(channel, None)

    def unsubscribe(self, channel: str) -> None:
        if channel not in self._refs:
            return
        self._release(channel)
        if channel in self._refs:
            return
        self._unsub_at[channel] = time.monotonic()
        if self._unsub_timer is None:
            self._unsub_timer = asyncio.get_running_loop().call_later(self.unsubscribe_delay, self._flush_unsubscribes)

    def _flush_unsubscribes(self) -> None:
        """One timer per engine: broker UNSUBSCRIBE for channels released >= the delay ago."""
        self._unsub_timer = None
        now = time.monotonic()
        due: dict[Shard, list[bytes]] = {}
        for channel, at in list(self._unsub_at.items()):
            if now - at >= self.unsubscribe_delay:
                del self._unsub_at[channel]
                shard = self._shard_of(channel)
                if channel not in self._refs and shard.subscribed.pop(channel, None) is not None:
                    due.setdefault(shard, []).append(self._client_key(channel))
        for shard, keys in due.items():
            if shard.up and shard.sub is not None:
                shard.sub.unsubscribe(keys)
        if self._unsub_at:
            self._unsub_timer = asyncio.get_running_loop().call_later(self.unsubscribe_delay, self._flush_unsubscribes)

    # -- history ----------------------------------------------------------------------------

    async def _history_call(self, channel: str, start: str, end: str, count: int, reverse: bool):
        shard = self._shard_of(channel)
        fut = shard.script("history", (self._key("stream", channel), self._key("stream.meta", channel)),
                           (_epoch_now(), self.meta_ttl, start, end, count, "1" if reverse else "0"))
        try:
            top, epoch, entries = await fut
        except RedisReplyError as exc:
            log.error("history of %r: %s", channel, exc)
            raise
        return int(top), epoch.decode(), entries

    async def stream_top(self, channel: str) -> tuple[int, str]:
        top, epoch, _ = await self._history_call(channel, "-", "+", 0, False)
        return top, epoch

    async def history(self, channel: str, *, since: tuple[int, str] | None, limit: int,
                      reverse: bool) -> tuple[list[Publication], int, str]:
        if since is None:
            start, end = ("+", "-") if reverse else ("-", "+")
        elif reverse:
            if since[0] == 0:
                raise ApiError(100)                # the reference's quirk (06 §4.9)
            start, end = f"{since[0] - 1}-0", "-"
        else:
            start, end = f"{since[0] + 1}-0", "+"
        count = limit if limit >= 0 else -1
        top, epoch, entries = await self._history_call(channel, start, end, count, reverse)
        if since is not None and since[1] and since[1] != epoch:
            raise ApiError(112)
        pubs = []
        for entry_id, fields in entries:
            pub = rc.decode_publication(_field(fields, b"d"))
            pub.offset = int(entry_id.split(b"-", 1)[0])
            pubs.append(pub)
        return pubs, top, epoch

    async def remove_history(self, channel: str) -> None:
        await self._shard_of(channel).call(("DEL", self._key("stream", channel)))

    # -- presence ---------------------------------------------------------------------------

    def _presence_keys(self, channel: str) -> tuple[str, str]:
        return self._key("presence.data", channel), self._key("presence.expire", channel)

    def _presence_add(self, channel: str, client: str, encoded: bytes) -> asyncio.Future:
        return self._shard_of(channel).script(
            "presence_add", self._presence_keys(channel),
            (client, encoded, int(time.time()) + self.presence_ttl, self.presence_ttl))

    async def add_presence(self, channel: str, client: str, info: bytes) -> None:
        try:
            encoded = rc.encode_client_info(info)
        except rc.PayloadError as exc:
            raise ValueError(f"presence info of {client!r}: {exc}") from None
        # Recorded first: the periodic refresh restores it if Redis lost it (or was down now).
        self._presence[(channel, client)] = encoded
        await self._presence_add(channel, client, encoded)

    async def remove_presence(self, channel: str, client: str) -> None:
        self._presence.pop((channel, client), None)
        await self._shard_of(channel).script("presence_remove", self._presence_keys(channel), (client,))

    async def _presence_raw(self, channel: str) -> list[bytes]:
        return await self._shard_of(channel).script("presence_get", self._presence_keys(channel),
                                                    (int(time.time()),))

    async def presence(self, channel: str) -> dict[str, bytes]:
        flat = await self._presence_raw(channel)
        return {flat[i].decode(): rc.decode_client_info(flat[i + 1]) for i in range(0, len(flat), 2)}

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        flat = await self._presence_raw(channel)
        users = {rc.client_info_user(flat[i]) for i in range(1, len(flat), 2)}
        return len(flat) // 2, len(users)

    async def _refresh_presence(self) -> None:
        """ONE task per engine re-adds this engine's entries every presence_update_interval."""
        while True:
            await asyncio.sleep(self.presence_update_interval)
            entries = list(self._presence.items())
            for i in range(0, len(entries), 1000):          # pipelined in chunks
                calls = [self._presence_add(ch, client, enc) for (ch, client), enc in entries[i:i + 1000]]
                results = await asyncio.gather(*calls, return_exceptions=True)
                failed = sum(1 for r in results if isinstance(r, BaseException))
                if failed:
                    log.warning("presence refresh: %d of %d entries failed", failed, len(calls))

    # -- control ----------------------------------------------------------------------------

    def _send_control(self, message: dict, to: str | None = None) -> asyncio.Future:
        message["uid"] = self.node_uid
        body = orjson.dumps(message)
        key = self.prefix.encode() + b".node." + to.encode() if to else self._control_key
        up = [s for s in self.shards if s.up] or self.shards
        shard = up[next(self._rr) % len(up)] if up else None
        if shard is None:
            fut = asyncio.get_running_loop().create_future()
            fut.set_exception(ApiError(100))
            return fut
        return shard.call(("PUBLISH", key, body), _none)

    def publish_control(self, op: str, args: dict) -> asyncio.Future:
        return self._send_control({"m": "cmd", "op": op, "args": args})

    async def survey(self, op: str, args: dict) -> list[Any]:
        if not self.control:
            raise RuntimeError("survey needs the engine instance that takes part in control")
        expected = len(self.nodes())
        if expected == 0:
            return []
        sid = next(self._survey_ids)
        fut = asyncio.get_running_loop().create_future()
        self._surveys[sid] = (fut, [], expected)
        try:
            await self._send_control({"m": "survey", "id": sid, "op": op, "args": args})
            return await _within(fut, self.survey_timeout)
        except TimeoutError:
            raise ApiError(100) from None
        finally:
            self._surveys.pop(sid, None)

    def nodes(self) -> list[dict]:
        now = time.monotonic()
        return [info for info, seen in self._registry.values() if now - seen <= self.node_stale]

    def _on_control(self, payload: bytes) -> None:
        try:
            msg = orjson.loads(payload)
            uid, method = msg["uid"], msg["m"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.error("undecodable control message dropped")
            return
        if uid == self.node_uid or not self.control:
            return
        if method == "node":
            info = msg.get("info") or {}
            old = self._registry.get(uid)
            if old is not None and not info.get("metrics") and old[0].get("metrics"):
                info["metrics"] = old[0]["metrics"]     # kept from the last message that had them
            self._registry[uid] = (info, time.monotonic())
            if old is None:
                self._send_control(self._node_message(), to=uid).add_done_callback(_consume)
        elif method == "shutdown":
            self._registry.pop(uid, None)
        elif method == "cmd":
            self.handler.handle_control(msg.get("op", ""), msg.get("args") or {})
        elif method == "survey":
            # Surveys are rare (API `channels`): one task each, held until done (the loop
            # keeps only weak references to tasks).
            task = asyncio.get_running_loop().create_task(self._answer_survey(uid, msg))
            self._survey_tasks.add(task)
            task.add_done_callback(self._survey_tasks.discard)
        elif method == "survey_resp":
            entry = self._surveys.get(msg.get("id"))
            if entry is None:
                return
            fut, answers, expected = entry
            if msg.get("code"):
                if not fut.done():
                    fut.set_exception(ApiError(100))
                return
            answers.append(msg.get("data"))
            if len(answers) >= expected and not fut.done():
                fut.set_result(answers)

    async def _answer_survey(self, uid: str, msg: dict) -> None:
        reply: dict[str, Any] = {"m": "survey_resp", "id": msg.get("id")}
        try:
            reply["data"] = await self.handler.handle_survey(msg.get("op", ""), msg.get("args") or {})
            reply["code"] = 0
        except Exception:
            log.exception("survey %r failed", msg.get("op"))
            reply["code"] = 1
        try:
            await self._send_control(reply, to=uid)
        except ApiError:
            pass

    def _node_message(self) -> dict:
        return {"m": "node", "info": self.handler.node_info()}

    def _shard_up(self, shard: Shard) -> None:
        if self.control and shard.up:
            self._send_control(self._node_message()).add_done_callback(_consume)

    async def _tick(self) -> None:
        """Watchdogs and PUB/SUB pings every ping_interval; NODE every node_interval."""
        last_node = time.monotonic()
        while True:
            await asyncio.sleep(self.ping_interval)
            now = time.monotonic()
            for shard in self.shards:
                shard.watchdog(now)
                if shard.up and self.control:
                    shard.call(("PUBLISH", self._ping_key, b"")).add_done_callback(_consume)
            if self.control and now - last_node >= self.node_interval:
                last_node = now
                self._send_control(self._node_message()).add_done_callback(_consume)

    def sweep(self) -> None:
        now = time.monotonic()
        for uid in [u for u, (_, seen) in self._registry.items() if now - seen > self.node_stale]:
            del self._registry[uid]

    def num_streams(self) -> int:
        return 0

    def num_presence_channels(self) -> int:
        """Channels this engine keeps presence entries in (its own connections')."""
        return len({channel for channel, _ in self._presence})


def _field(fields: list[bytes], name: bytes) -> bytes:
    for i in range(0, len(fields) - 1, 2):
        if fields[i] == name:
            return fields[i + 1]
    raise rc.PayloadError(f"stream entry without field {name!r}")


def _position(reply: list) -> tuple[int, str]:
    return int(reply[0]), reply[1].decode()


def _no_position(_reply: Any) -> tuple[int, str]:
    return 0, ""


def _none(_reply: Any) -> None:
    return None


def _consume(fut: asyncio.Future) -> None:
    """Fire-and-forget calls: retrieve the outcome so no 'exception never retrieved' warning."""
    if not fut.cancelled():
        fut.exception()
