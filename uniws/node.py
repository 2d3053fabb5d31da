"""The per-worker core: connections, server-side subscriptions, the publish pipeline, the API.

One Node per worker process holds all of that worker's state (no module
globals). It is driven by three edges: `Conn` callbacks from picows
(conn_open / conn_message / conn_lost ...), the HTTP API (publish, subscribe,
...), and the engine (`handle_publication`). Output always goes through the
Cython `Fanout`, which coalesces frames per client per loop turn.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Iterable

import orjson

from . import __version__, codec
from ._fastpath import CLOSED, CONNECTED, CONNECTING, Conn, Fanout, PingWheel, pub_frame
from .auth import Credentials, TokenError, TokenVerifier
from .channels import ChannelOptions, ChannelRules, channel_name_ok
from .cluster import Cluster, ShardedEngine
from .deadlines import Deadlines
from .eager import run_eager
from .engine.base import Publication, position_of
from .engine.memory import MemoryEngine
from .errors import (BAD_REQUEST, CHANNEL_LIMIT, CONNECTION_CLOSED, CONNECTION_LIMIT, EXPIRED, FORCE_DISCONNECT,
                     INSUFFICIENT_STATE, INTERNAL, INVALID_TOKEN, SHUTDOWN, SLOW, STALE, SUB_EXPIRED, WRITE_ERROR,
                     ApiError, Disconnect)
from .globmatch import compile_glob
from .protocol import ConnectRequest, ConnectRequestError, SubHint, parse_connect_request
from .proxy import ConnContext, Headers, Proxy
from .transport import BOUNDARY

log = logging.getLogger("uniws.node")

_RELOADABLE = ("token_hmac_secret_key", "token_rsa_public_key", "token_ecdsa_public_key", "token_audience",
               "token_issuer", "channel_options", "namespaces", "channel_private_prefix",
               "channel_namespace_boundary", "channel_user_boundary", "channel_user_separator",
               "user_subscribe_to_personal", "user_personal_channel_namespace",
               "user_personal_single_connection", "client_insecure", "client_anonymous",
               *(f.name for f in dataclasses.fields(ChannelOptions)))


@dataclass(slots=True)
class Subscription:
    """One server-side subscription of a connection: effective options and channel info."""

    presence: bool = False
    join_leave: bool = False
    recover: bool = False
    position: bool = False
    chan_info: bytes | None = None
    data: bytes | None = None
    expire_at: int = 0
    epoch: str = ""           # stream position reported to the client (positioned only)
    offset: int = 0

    @property
    def positioned(self) -> bool:
        return self.recover or self.position


def _override(value: bool | None, default: bool) -> bool:
    return default if value is None else value


class Node:
    def __init__(self, cfg, loop: asyncio.AbstractEventLoop, *, index: int = 0, count: int = 1,
                 uid: str | None = None) -> None:
        self.cfg = cfg
        self.loop = loop
        self.index = index
        self.rules = ChannelRules.from_config(cfg)
        self.verifier = TokenVerifier.from_config(cfg)
        self.proxy = Proxy.from_config(cfg)
        # Per connection that may call a proxy later: captured headers (until connected), then
        # headers and meta of connections the refresh proxy will be asked about. Others: no entry.
        self._proxy_ctx: dict[str, ConnContext] = {}
        self._refreshing: set[str] = set()       # refresh proxy calls in flight, by client id
        self.cluster: Cluster | None = None
        if count > 1:
            # Streams are sharded over the workers; the bus is attached by the server.
            local = MemoryEngine(None, history_meta_ttl=cfg.history_meta_ttl)
            self.cluster = Cluster(self, index, count, local)
            local.set_handler(self.cluster)
            self.engine = ShardedEngine(self.cluster)
        else:
            self.engine = MemoryEngine(self, history_meta_ttl=cfg.history_meta_ttl)
        self.fanout = Fanout(loop, cfg.client_queue_max_size, self._close_slow)
        self.uid = uid or str(uuid.uuid4())
        self.name = cfg.name or f"{socket.gethostname()}_{cfg.port}"
        self.version = __version__
        self.started = time.time()
        self.shutting_down = False
        self.conns: dict[str, Conn] = {}                 # every open connection by client id
        # Member indexes (see add_member): user -> connections, channel -> v1 / v2 subscribers.
        self.users: dict[str, Members] = {}
        self.hub: dict[str, Members] = {}
        self.hub_v2: dict[str, Members] = {}
        # Positioned subscribers per channel, and the last (epoch, offset) this worker delivered
        # on that channel: the live position check (05 §9) is one comparison per publication.
        self.positioned: dict[str, dict[Conn, None]] = {}
        self.positions: dict[str, tuple[str, int]] = {}
        # Connects waiting for a stream position: publications arriving meanwhile are kept.
        self._pending: dict[str, dict[Conn, list[tuple[Publication, str]]]] = {}
        self._stale = Deadlines()
        self._expiry = Deadlines()
        self._sub_expiry = Deadlines()
        self._tasks: set[asyncio.Task] = set()
        ping = cfg.uni_websocket_ping_interval
        self.ping_interval = ping if ping > 0 else 0.0
        self.tick = min(1.0, self.ping_interval) if self.ping_interval else 1.0
        nslots = max(1, round(self.ping_interval / self.tick)) if self.ping_interval else 1
        # Read deadline 10/9 of the interval (01 §6.1), plus one tick: peers are visited per tick.
        self.wheel = PingWheel(self.fanout, nslots, self.ping_interval * 10 / 9 + self.tick,
                               cfg.uni_websocket_write_timeout)
        self._timer: asyncio.TimerHandle | None = None
        self.http = None               # http.FrontLimits, set by server.py: its deadlines ride this tick
        # Counters read by metrics.py (per publication or connection, never per message sent).
        self.publications = 0          # publications handed to this worker's hub
        self.connects = 0
        self.disconnects: dict[int, int] = {}      # server-side disconnect code -> count
        self.metrics = None            # metrics.WorkerMetrics, set by server.py when enabled

    def reload(self, cfg) -> None:
        """Apply a re-read config's token keys and channel rules (07 §7.1); the rest needs a restart."""
        fields = {name: getattr(cfg, name) for name in _RELOADABLE}
        verifier = TokenVerifier.from_config(cfg)          # raises on a bad key: nothing changes
        rules = ChannelRules.from_config(cfg)
        self.cfg = dataclasses.replace(self.cfg, **fields)
        self.verifier, self.rules = verifier, rules

    # -- periodic work ---------------------------------------------------------------------

    def start(self) -> None:
        self._timer = self.loop.call_later(self.tick, self._on_tick)

    def _on_tick(self) -> None:
        self._timer = self.loop.call_later(self.tick, self._on_tick)
        try:
            if self.ping_interval:
                self.wheel.tick()
                dead, self.wheel.dead = self.wheel.dead, []
                for conn in dead:
                    log.info("closing client %s: no pong within the read deadline", conn.client_id)
                    self._close_silently(conn)
                stuck, self.wheel.stuck = self.wheel.stuck, []
                for conn in stuck:
                    log.info("closing client %s: socket refused writes for over %s s", conn.client_id,
                             self.cfg.uni_websocket_write_timeout)
                    self.disconnect_conn(conn, WRITE_ERROR)
            self._run_deadlines(time.time())
            self.engine.sweep()
            if self.cluster is not None:
                self.cluster.expire_requests(time.monotonic())
            if self.http is not None:
                self.http.sweep(time.monotonic())
        except Exception:
            log.exception("periodic tick failed")

    def _run_deadlines(self, now: float) -> None:
        for check, deadlines in ((self._check_stale, self._stale), (self._check_expiry, self._expiry),
                                 (self._check_sub_expiry, self._sub_expiry)):
            for client_id in deadlines.pop_due(now):
                conn = self.conns.get(client_id)
                if conn is not None and conn.close_reason is None:
                    check(conn, now)

    def _check_stale(self, conn: Conn, now: float) -> None:
        if conn.state == CONNECTING:
            self.disconnect_conn(conn, STALE)

    def _check_expiry(self, conn: Conn, now: float) -> None:
        if conn.expire_at <= 0:
            return
        if self.proxy is not None and self.proxy.refresh_endpoint:
            self._check_refresh(conn, now)
            return
        due = conn.expire_at + self.cfg.client_expired_close_delay
        if now >= due:
            self.disconnect_conn(conn, EXPIRED)
        else:
            self._expiry.add(due, conn.client_id)

    def _check_refresh(self, conn: Conn, now: float) -> None:
        """Server-side refresh (04 §6.3): ask the refresh proxy at the expiration moment."""
        if conn.client_id in self._refreshing:
            return                                  # its outcome schedules the next check
        if now < conn.expire_at:
            self._expiry.add(conn.expire_at, conn.client_id)
            return
        self._refreshing.add(conn.client_id)
        self.track(self.loop.create_task(self._refresh_via_proxy(conn)))

    async def _refresh_via_proxy(self, conn: Conn) -> None:
        client_id = conn.client_id
        try:
            outcome = await self.proxy.refresh(client_id, conn.user or "", self._proxy_ctx.get(client_id),
                                               time.time)
        finally:
            self._refreshing.discard(client_id)
        if conn.close_reason is not None or conn.state != CONNECTED:
            return
        if outcome.disconnect is not None:
            log.info("refresh proxy ended client %s: %d %s", client_id, outcome.disconnect.code,
                     outcome.disconnect.reason)
            self.disconnect_conn(conn, outcome.disconnect)
            return
        conn.expire_at = outcome.expire_at
        if outcome.info is not None:
            conn.info = outcome.info
        self._expiry.add(outcome.expire_at, client_id)

    def _check_sub_expiry(self, conn: Conn, now: float) -> None:
        delay = self.cfg.client_expired_sub_close_delay
        for sub in conn.channels.values():
            if sub.expire_at and now > sub.expire_at + delay:
                self.disconnect_conn(conn, SUB_EXPIRED)
                return

    # -- connection events from Conn (picows) ------------------------------------------------

    def new_conn(self, v2: bool, connect_request: ConnectRequest | None, headers: Headers = ()) -> Conn:
        """A connection being upgraded; `headers`: its request's proxy_http_headers (picows calls
        conn_open within the same upgrade, and conn_lost drops the entry)."""
        conn = Conn()
        conn.node = self
        conn.v2 = v2
        conn.size_limit = self.cfg.uni_websocket_message_size_limit
        conn.connect_request = connect_request
        conn.client_id = str(uuid.uuid4())
        conn.channels = {}
        if headers:
            self._proxy_ctx[conn.client_id] = ConnContext(headers, None)
        return conn

    def conn_open(self, conn: Conn) -> None:
        if self.shutting_down:
            conn.close_transport(False)
            return
        self.conns[conn.client_id] = conn
        self.connects += 1
        if self.ping_interval:
            self.wheel.add(conn)
        if conn.connect_request is not None:
            self._start_connect(conn, conn.connect_request)
        else:
            self._stale.add(time.time() + self.cfg.client_stale_close_delay, conn.client_id)

    def conn_message(self, conn: Conn, payload: bytes) -> None:
        if conn.state != CONNECTING or conn.close_reason is not None:
            return
        try:
            request = parse_connect_request(payload)
        except ConnectRequestError as exc:
            log.info("closing client %s: bad connect request (%s)", conn.client_id, exc)
            self._close_silently(conn)
            return
        self._start_connect(conn, request)

    def conn_close_frame(self, conn: Conn, code: int | None) -> None:
        """The client sent a close frame: echo its code with an empty reason, close TCP (01 §8.2)."""
        frame = b"\x88\x00" if code is None else b"\x88\x02" + int(code).to_bytes(2, "big")
        self._close_with_frame(conn, frame)

    def conn_too_big(self, conn: Conn) -> None:
        log.info("closing client %s: message over uni_websocket_message_size_limit", conn.client_id)
        self._close_with_frame(conn, b"\x88\x02\x03\xf1")   # 1009, empty reason

    def conn_lost(self, conn: Conn) -> None:
        try:
            self._forget(conn)
        except Exception:
            log.exception("cleanup of client %s failed", conn.client_id)

    def _close_with_frame(self, conn: Conn, frame: bytes) -> None:
        self._terminate(conn, CONNECTION_CLOSED, frame)

    def _close_silently(self, conn: Conn) -> None:
        self._terminate(conn, CONNECTION_CLOSED, None)

    def disconnect_conn(self, conn: Conn, reason: Disconnect) -> None:
        """Server-side termination (01 §8.1): leave channels, Disconnect push, TCP close."""
        if conn.close_reason is None and conn.state != CLOSED:       # counted once, as _terminate acts once
            self.disconnects[reason.code] = self.disconnects.get(reason.code, 0) + 1
        push = None
        if reason.code != 3000:
            push = codec.frame_text(codec.disconnect_push(conn.v2, reason.code, reason.reason, reason.reconnect))
        self._terminate(conn, reason, push)

    def _terminate(self, conn: Conn, reason: Disconnect, last: bytes | None) -> None:
        """Leave every channel, write what is queued plus `last`, close TCP (no close frame)."""
        if conn.close_reason is not None or conn.state == CLOSED:
            return
        conn.close_reason = reason
        self._unsubscribe_all(conn)
        if last is not None:
            conn.write_now(last)
        conn.close_transport(True)
        if conn.queued:
            # The graceful close waits for the peer to read what is still queued; one that takes
            # nothing more (a slow client, typically) must not keep the socket and queue forever.
            self.loop.call_later(max(self.cfg.uni_websocket_write_timeout, 1.0), self._abort_closing, conn)

    @staticmethod
    def _abort_closing(conn: Conn) -> None:
        if conn.state != CLOSED and conn.queued:
            conn.close_transport(False)

    def _close_slow(self) -> None:
        slow, self.fanout.slow = self.fanout.slow, []
        limit = self.fanout.queue_max
        for conn in slow:
            # Runs right after the flush: a client that went over the limit within one loop turn
            # (e.g. one API request publishing a lot) but whose socket took it all is not slow.
            if conn.close_reason is None and conn.state != CLOSED and conn.queued > limit:
                log.info("closing client %s: %d bytes queued exceed client_queue_max_size",
                         conn.client_id, conn.queued)
                self.disconnect_conn(conn, SLOW)

    def _forget(self, conn: Conn) -> None:
        """Drop every reference to a closed connection (idempotent)."""
        self.conns.pop(conn.client_id, None)
        self._proxy_ctx.pop(conn.client_id, None)
        self._unsubscribe_all(conn)
        if conn.user is not None:
            remove_member(self.users, conn.user, conn)

    # -- connect (spec 05 §5) ----------------------------------------------------------------

    def _start_connect(self, conn: Conn, request: ConnectRequest) -> None:
        # While it runs the request stays on the connection: Conn then drops any further message
        # (01 §4.1), so a client cannot start a second connect while the first waits.
        conn.connect_request = request
        if self._asks_connect_proxy(request):
            # The backend call waits for the network, and aiohttp's timeouts need a task.
            self.track(self.loop.create_task(self._connect(conn, request)))
            return
        # Run now: a JWT connect rarely waits (only for a channel position owned by another
        # worker), and a task per connect costs as much as the JWT check.
        waiting = run_eager(self._connect(conn, request))
        if waiting is not None:
            self.track(waiting)

    def _asks_connect_proxy(self, request: ConnectRequest) -> bool:
        """A connect without a token goes to the connect proxy when there is one (08 §2.1)."""
        return not request.token and self.proxy is not None and bool(self.proxy.connect_endpoint)

    async def _connect(self, conn: Conn, request: ConnectRequest) -> None:
        try:
            await self._do_connect(conn, request)
        except Disconnect as reason:
            log.info("connect of client %s rejected: %d %s", conn.client_id, reason.code, reason.reason)
            self.disconnect_conn(conn, reason)
        except Exception:
            log.exception("connect of client %s failed", conn.client_id)
            self.disconnect_conn(conn, INTERNAL)
        finally:
            conn.connect_request = None

    async def _proxy_credentials(self, conn: Conn, request: ConnectRequest) -> Credentials | None:
        context = self._proxy_ctx.get(conn.client_id)
        creds = await self.proxy.connect(conn.client_id, request, context.headers if context else ())
        if creds is not None:
            self._check_namespaces(creds)
        return creds

    def _keep_proxy_context(self, conn: Conn, creds: Credentials | None) -> None:
        """After connect, keep headers and meta only for connections the refresh proxy will be asked
        about: an idle connection should not carry its request's cookies for nothing."""
        context = self._proxy_ctx.pop(conn.client_id, None)
        if conn.expire_at and self.proxy is not None and self.proxy.refresh_endpoint:
            meta = creds.meta if creds is not None and self.proxy.include_meta else None
            if context is not None or meta is not None:
                self._proxy_ctx[conn.client_id] = ConnContext(context.headers if context else (), meta)

    def _check_namespaces(self, creds: Credentials) -> None:
        for channel in creds.subs:
            if channel and self.rules.options(channel) is None:
                raise INTERNAL           # error 102 during connect becomes 3004 (03 §4)

    def _credentials(self, request: ConnectRequest, now: float) -> Credentials | None:
        if not request.token:
            return None
        try:
            creds = self.verifier.verify(request.token, now)
        except TokenError as exc:
            log.info("token rejected: %s", exc)
            if exc.kind == "expired":
                raise EXPIRED from None
            raise (INVALID_TOKEN if exc.kind == "invalid" else INTERNAL) from None
        self._check_namespaces(creds)
        return creds

    def _connect_subscriptions(self, creds: Credentials | None, user: str,
                               request: ConnectRequest) -> dict[str, Subscription]:
        rules = self.rules
        subs: dict[str, Subscription] = {}
        if creds is not None:
            for channel, tsub in creds.subs.items():
                opts = rules.options(channel)
                subs[channel] = Subscription(
                    presence=_override(tsub.presence, opts.presence),
                    join_leave=_override(tsub.join_leave, opts.join_leave),
                    recover=_override(tsub.recover, opts.recover),
                    position=_override(tsub.position, opts.position),
                    chan_info=tsub.info, data=tsub.data)
        has_credentials = creds is not None or self.cfg.client_anonymous or self.cfg.client_insecure
        if has_credentials and self.cfg.user_subscribe_to_personal and user:
            channel = rules.personal_channel(user)
            opts = rules.options(channel)
            if opts is None:
                raise INTERNAL
            subs[channel] = Subscription(presence=opts.presence, join_leave=opts.join_leave, recover=opts.recover)
        if creds is not None and creds.client_subs:   # client-requested channels only with a token (04 §5)
            for channel in request.subs:
                opts = rules.options(channel)
                if opts is None:
                    raise BAD_REQUEST
                if rules.is_user_limited(channel):
                    allowed = user != "" and rules.user_allowed(channel, user)
                else:
                    allowed = not rules.is_private(channel) and not opts.protected
                if allowed and channel not in subs:
                    subs[channel] = Subscription(presence=opts.presence, join_leave=opts.join_leave,
                                                 recover=opts.recover)
        subs.pop("", None)
        return subs

    async def _do_connect(self, conn: Conn, request: ConnectRequest) -> None:
        cfg = self.cfg
        if self._asks_connect_proxy(request):
            if conn.close_reason is not None or conn.state == CLOSED:
                return                                # gone before the backend was asked
            creds = await self._proxy_credentials(conn, request)
            if conn.close_reason is not None or conn.state == CLOSED:
                return                                # the client went away meanwhile
        else:
            creds = self._credentials(request, time.time())
        now = time.time()
        user = creds.user if creds is not None else ""
        subs = self._connect_subscriptions(creds, user, request)
        if len(subs) > cfg.client_channel_limit:
            raise CHANNEL_LIMIT
        if creds is None and not (cfg.client_anonymous or cfg.client_insecure):
            raise BAD_REQUEST
        limit = cfg.client_user_connection_limit
        if limit and user and count_members(self.users.get(user)) >= limit:
            raise CONNECTION_LIMIT
        expire_at = 0 if cfg.client_insecure or creds is None else creds.expire_at
        if 0 < expire_at < int(now):
            raise EXPIRED

        # Positioned channels need the stream position from the channel's owner, which may
        # be another worker: publications that arrive meanwhile are buffered per channel and
        # merged by offset after the answer, so none falls between the position in the
        # connect push and the first live push (05 §8.5).
        positioned = [channel for channel, sub in subs.items() if sub.positioned]
        self._begin_buffer(conn, positioned)
        try:
            results: dict[str, bytes] = {}
            for channel, sub in subs.items():
                results[channel] = await self._subscribe_result(channel, sub, request.subs.get(channel))
        finally:
            buffered = self._end_buffer(conn, positioned)
        if conn.close_reason is not None or conn.state == CLOSED:
            return                                    # the client went away meanwhile
        conn.user = user
        conn.info = creds.info if creds is not None else None
        conn.expire_at = expire_at
        conn.session = str(uuid.uuid4())
        conn.state = CONNECTED
        add_member(self.users, user, conn)
        # With a refresh proxy the server refreshes: the client is told no expiry (04 §6.3).
        refreshed = self.proxy is not None and bool(self.proxy.refresh_endpoint)
        client_expires = bool(expire_at) and not refreshed
        ttl = max(0, expire_at - int(now)) if client_expires else 0
        push = codec.connect_push(conn.v2, client=conn.client_id, version=self.version, subs=results,
                                  expires=client_expires, ttl=ttl, session=conn.session,
                                  ping=25 if conn.v2 else 0, data=creds.data if creds is not None else None)
        self.fanout.enqueue(conn, codec.frame_text(push))
        for channel, sub in subs.items():
            self._add_to_hub(conn, channel, sub)
        for channel in positioned:
            if not self._catch_up(conn, channel, subs[channel], buffered[channel]):
                return
        if self.proxy is not None:
            self._keep_proxy_context(conn, creds)
        if expire_at:
            # The refresh proxy is asked at the expiration moment; without it the connection gets
            # client_expired_close_delay more (04 §6.2, 6.3).
            self._expiry.add(expire_at if refreshed else expire_at + cfg.client_expired_close_delay, conn.client_id)
        for channel, sub in subs.items():
            if sub.join_leave:
                self._broadcast_join_leave(codec.JOIN, channel, conn, sub)
        if cfg.user_personal_single_connection and user:
            await self.disconnect(user, whitelist=[conn.client_id], disconnect=CONNECTION_LIMIT)
        log.debug("client %s connected as user %r with %d channels", conn.client_id, user, len(subs))

    def _begin_buffer(self, conn: Conn, channels: list[str]) -> None:
        for channel in channels:
            self._pending.setdefault(channel, {})[conn] = []

    def _end_buffer(self, conn: Conn, channels: list[str]) -> dict[str, list[tuple[Publication, str]]]:
        buffered = {}
        for channel in channels:
            waiting = self._pending.get(channel)
            buffered[channel] = waiting.pop(conn, []) if waiting is not None else []
            if not waiting:
                self._pending.pop(channel, None)
        return buffered

    def _catch_up(self, conn: Conn, channel: str, sub: Subscription,
                  buffered: list[tuple[Publication, str]]) -> bool:
        """Deliver publications that arrived while the position was fetched, keeping offsets
        contiguous; a gap or epoch change means the client cannot be consistent: 3010."""
        epoch, offset = sub.epoch, sub.offset
        for pub, pub_epoch in buffered:
            if pub.offset == 0:
                self._deliver_one(conn, channel, pub)
            elif pub_epoch == epoch and pub.offset <= offset:
                continue                              # already in the connect push or history
            elif pub_epoch == epoch and pub.offset == offset + 1:
                self._deliver_one(conn, channel, pub)
                offset = pub.offset
            else:
                self.disconnect_conn(conn, INSUFFICIENT_STATE)
                return False
        sub.offset = offset
        current = self.positions.get(channel)
        if current is None:
            self.positions[channel] = (epoch, offset)
        elif current != (epoch, offset):
            log.info("client %s position %s:%d behind %s:%d on %s", conn.client_id, epoch, offset,
                     current[0], current[1], channel)
            self.disconnect_conn(conn, INSUFFICIENT_STATE)
            return False
        return True

    def _deliver_one(self, conn: Conn, channel: str, pub: Publication) -> None:
        frame = pub_frame(conn.v2, codec.json_string(channel), codec.raw(pub.data), pub.offset,
                          codec.tags_object(pub.tags))
        self.fanout.enqueue(conn, frame)

    async def _subscribe_result(self, channel: str, sub: Subscription, hint: SubHint | None) -> bytes:
        if not sub.positioned:
            return codec.subscribe_result(data=sub.data)
        if sub.recover and hint is not None and hint.recover:
            return await self._recover(channel, sub, hint)
        sub.offset, sub.epoch = await self.engine.stream_top(channel)
        return codec.subscribe_result(recoverable=sub.recover, epoch=sub.epoch, offset=sub.offset,
                                      positioned=True, data=sub.data)

    async def _recover(self, channel: str, sub: Subscription, hint: SubHint) -> bytes:
        """Connect-time recovery (05 §8)."""
        top, epoch = await self.engine.stream_top(channel)
        pubs: list[Publication] = []
        if hint.epoch and hint.epoch != epoch:
            recovered = False
        else:
            if hint.offset < top:
                limit = self.cfg.client_recovery_max_publication_limit
                pubs, top, epoch = await self.engine.history(channel, since=(hint.offset, ""),
                                                             limit=limit if limit > 0 else -1, reverse=False)
            if not pubs:
                recovered = top == hint.offset
            else:
                recovered = pubs[0].offset == hint.offset + 1 and pubs[-1].offset == top
        offset = max(top, pubs[-1].offset if pubs else 0)
        sub.offset, sub.epoch = offset, epoch
        encoded = [codec.publication(p.data, p.offset, codec.tags_object(p.tags)) for p in pubs]
        return codec.subscribe_result(recoverable=True, epoch=epoch, publications=encoded,
                                      recovered=recovered, offset=offset, positioned=True, data=sub.data)

    # -- hub -------------------------------------------------------------------------------

    def _add_to_hub(self, conn: Conn, channel: str, sub: Subscription) -> None:
        conn.channels[channel] = sub
        add_member(self.hub_v2 if conn.v2 else self.hub, channel, conn)
        if sub.positioned:
            self.positioned.setdefault(channel, {})[conn] = None

    def _remove_from_hub(self, conn: Conn, channel: str) -> Subscription | None:
        sub = conn.channels.pop(channel, None)
        if sub is None:
            return None
        remove_member(self.hub_v2 if conn.v2 else self.hub, channel, conn)
        positioned = self.positioned.get(channel)
        if positioned is not None:
            positioned.pop(conn, None)
            if not positioned:
                del self.positioned[channel]
                self.positions.pop(channel, None)
        return sub

    def _unsubscribe_all(self, conn: Conn) -> None:
        if not conn.channels:
            return
        for channel in list(conn.channels):
            self._leave(conn, channel)

    def _leave(self, conn: Conn, channel: str) -> Subscription | None:
        """Unsubscribe: Leave to the channel's subscribers (the leaving one first), presence removed."""
        sub = conn.channels.get(channel)
        if sub is None:
            return None
        if sub.join_leave and conn.state == CONNECTED:
            self._broadcast_join_leave(codec.LEAVE, channel, conn, sub)
        self._remove_from_hub(conn, channel)
        return sub

    def track(self, task: asyncio.Future) -> None:
        """Keep a reference to a short-lived task (or eager run's future) until it is done."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _client_info(self, conn: Conn, sub: Subscription) -> bytes:
        return codec.client_info(conn.user or "", conn.client_id, conn.info, sub.chan_info)

    @staticmethod
    def _presence_info(conn: Conn, sub: Subscription) -> dict:
        info = {"user": conn.user or "", "client": conn.client_id}
        if conn.info:
            info["conn_info"] = orjson.Fragment(conn.info)
        if sub.chan_info:
            info["chan_info"] = orjson.Fragment(sub.chan_info)
        return info

    def _broadcast_join_leave(self, push_type: int, channel: str, conn: Conn, sub: Subscription) -> None:
        info = self._client_info(conn, sub)
        for v2, hub in ((False, self.hub), (True, self.hub_v2)):
            subscribers = hub.get(channel)
            if subscribers:
                frame = codec.frame_text(codec.join_leave_push(v2, push_type, channel, info))
                self.fanout.deliver(subscribers, frame)

    def handle_publication(self, channel: str, pub: Publication, epoch: str) -> None:
        """Engine callback: frame the publication once per protocol version, fan it out."""
        self.publications += 1
        if self._pending:
            waiting = self._pending.get(channel)
            if waiting:
                for buffer in waiting.values():
                    buffer.append((pub, epoch))
        if pub.offset and channel in self.positioned:
            self._check_position(channel, pub.offset, epoch)
        subscribers = self.hub.get(channel)
        subscribers_v2 = self.hub_v2.get(channel)
        if not subscribers and not subscribers_v2:
            return
        channel_json = codec.json_string(channel)
        tags = codec.tags_object(pub.tags)
        data = codec.raw(pub.data)
        if subscribers:
            self.fanout.deliver(subscribers, pub_frame(False, channel_json, data, pub.offset, tags))
        if subscribers_v2:
            self.fanout.deliver(subscribers_v2, pub_frame(True, channel_json, data, pub.offset, tags))

    def interested(self, channel: str) -> bool:
        """Whether a publication on `channel` has anyone to reach on this worker."""
        return channel in self.hub or channel in self.hub_v2 or channel in self._pending

    def _check_position(self, channel: str, offset: int, epoch: str) -> None:
        """Live position check (05 §9): a gap or an epoch change ends positioned subscriptions."""
        last = self.positions.get(channel)
        if last is not None and (last[0] != epoch or offset != last[1] + 1):
            log.info("channel %s jumped from %s:%d to %s:%d: positioned clients must recover",
                     channel, last[0], last[1], epoch, offset)
            for conn in list(self.positioned.get(channel, ())):
                self.disconnect_conn(conn, INSUFFICIENT_STATE)
        if channel in self.positioned:
            self.positions[channel] = (epoch, offset)

    def reset_clients(self) -> None:
        """This worker may have missed publications (bus overflow): every client reconnects and recovers."""
        for conn in list(self.conns.values()):
            if conn.state == CONNECTED:
                self.disconnect_conn(conn, INSUFFICIENT_STATE)

    # -- server API (06 §4) ------------------------------------------------------------------

    def _options(self, channel: str) -> ChannelOptions:
        """Options of a channel named in an API call; 107 for a name the node cannot carry (it
        never reaches the bus), 102 for an unknown namespace."""
        if not channel_name_ok(channel):
            raise ApiError(107)
        opts = self.rules.options(channel)
        if opts is None:
            raise ApiError(102)
        return opts

    def _matching(self, user: str, client: str = "", session: str = "") -> list[Conn]:
        return [c for c in each_member(self.users.get(user))
                if (not client or c.client_id == client) and (not session or c.session == session)
                and c.close_reason is None and c.state == CONNECTED]

    def _to_all_workers(self, op: str, args: dict) -> None:
        """User-targeted commands act on the whole node: every other worker applies them too."""
        if self.cluster is not None:
            self.cluster.command(op, args)

    async def apply_command(self, args: dict, _tail: bytes) -> None:
        """A user-targeted command broadcast by another worker: apply it to our connections."""
        op = args.pop("op")
        try:
            if op == "subscribe":
                await self._subscribe_local(**_raw_fields(args, "info", "data"))
            elif op == "unsubscribe":
                self._unsubscribe_local(**args)
            elif op == "disconnect":
                code, reason, reconnect = args.pop("reason")
                self._disconnect_local(**args, reason=Disconnect(code, reason, reconnect))
            elif op == "refresh":
                self._refresh_local(**_raw_fields(args, "info"))
        except ApiError:
            pass                          # the worker that took the API call reports errors

    def publish_now(self, channel: str, data: bytes, *, skip_history: bool = False,
                    tags: dict[str, str] | None = None):
        """Publish without a coroutine: (offset, epoch) when done at once, a Future when posted
        to the channel's owner (done when served; no position), else a coroutine of the position.
        Raises ApiError for a channel no namespace allows."""
        opts = self._options(channel)
        return self.engine.publish(channel, data, opts, skip_history=skip_history, tags=tags)

    async def publish(self, channel: str, data: bytes, *, skip_history: bool = False,
                      tags: dict[str, str] | None = None) -> tuple[int, str]:
        outcome = self.publish_now(channel, data, skip_history=skip_history, tags=tags)
        return outcome if type(outcome) is tuple else await position_of(outcome)

    async def subscribe(self, user: str, channel: str, *, client: str = "", session: str = "",
                        info: bytes | None = None, data: bytes | None = None, expire_at: int = 0,
                        recover_since: tuple[int, str] | None = None,
                        override: dict[str, bool] | None = None) -> None:
        self._options(channel)
        args = dict(user=user, channel=channel, client=client, session=session, expire_at=expire_at,
                    recover_since=recover_since, override=override or {})
        self._to_all_workers("subscribe", {**args, "info": _fragment(info), "data": _fragment(data)})
        await self._subscribe_local(**args, info=info, data=data)

    async def _subscribe_local(self, user: str, channel: str, client: str, session: str, info: bytes | None,
                               data: bytes | None, expire_at: int, recover_since, override: dict) -> None:
        opts = self._options(channel)
        conns = self._matching(user, client, session)
        if not conns:
            return
        if expire_at and expire_at <= time.time():
            raise ApiError(100)
        for conn in conns:
            if channel not in conn.channels and len(conn.channels) >= self.cfg.client_channel_limit:
                self.disconnect_conn(conn, CHANNEL_LIMIT)
                continue
            sub = Subscription(presence=override.get("presence", opts.presence),
                               join_leave=override.get("join_leave", opts.join_leave),
                               recover=override.get("recover", opts.recover),
                               position=override.get("position", opts.position),
                               chan_info=info, data=data, expire_at=expire_at)
            buffered: list[tuple[Publication, str]] = []
            if sub.positioned:
                self._begin_buffer(conn, [channel])
                try:
                    sub.offset, sub.epoch = await self.engine.stream_top(channel)
                finally:
                    buffered = self._end_buffer(conn, [channel])[channel]
                if conn.close_reason is not None or conn.state != CONNECTED:
                    continue
            reported = max(sub.offset, recover_since[0]) if recover_since else sub.offset
            self._remove_from_hub(conn, channel)
            payload = codec.subscribe_payload(recoverable=sub.recover, epoch=sub.epoch, offset=reported,
                                              positioned=sub.positioned, data=data)
            self.fanout.enqueue(conn, codec.frame_text(
                codec.envelope(conn.v2, codec.SUBSCRIBE, codec.json_string(channel), payload)))
            self._add_to_hub(conn, channel, sub)
            if sub.positioned and not self._catch_up(conn, channel, sub, buffered):
                continue
            if sub.join_leave:
                self._broadcast_join_leave(codec.JOIN, channel, conn, sub)
            if expire_at:
                self._sub_expiry.add(expire_at + self.cfg.client_expired_sub_close_delay + 0.001, conn.client_id)

    async def unsubscribe(self, user: str, channel: str, *, client: str = "", session: str = "") -> None:
        if channel:
            self._options(channel)
        args = dict(user=user, channel=channel, client=client, session=session)
        self._to_all_workers("unsubscribe", args)
        self._unsubscribe_local(**args)

    def _unsubscribe_local(self, user: str, channel: str, client: str, session: str) -> None:
        for conn in self._matching(user, client, session):
            self._leave(conn, channel)
            self.fanout.enqueue(conn, codec.frame_text(codec.unsubscribe_push(conn.v2, channel)))

    async def disconnect(self, user: str, *, client: str = "", session: str = "",
                         whitelist: Iterable[str] | None = None, disconnect: Disconnect | None = None) -> None:
        reason = disconnect or FORCE_DISCONNECT
        args = dict(user=user, client=client, session=session, whitelist=list(whitelist or ()))
        self._to_all_workers("disconnect", {**args, "reason": [reason.code, reason.reason, reason.reconnect]})
        self._disconnect_local(**args, reason=reason)

    def _disconnect_local(self, user: str, client: str, session: str, whitelist: list[str],
                          reason: Disconnect) -> None:
        keep = set(whitelist)
        for conn in self._matching(user, client, session):
            if conn.client_id not in keep:
                self.disconnect_conn(conn, reason)

    async def refresh(self, user: str, *, client: str = "", session: str = "", expired: bool = False,
                      expire_at: int = 0, info: bytes | None = None) -> None:
        args = dict(user=user, client=client, session=session, expired=expired, expire_at=expire_at)
        self._to_all_workers("refresh", {**args, "info": _fragment(info)})
        self._refresh_local(**args, info=info)

    def _refresh_local(self, user: str, client: str, session: str, expired: bool, expire_at: int,
                       info: bytes | None) -> None:
        now = time.time()
        for conn in self._matching(user, client, session):
            if expired or (expire_at and expire_at <= now):
                self.disconnect_conn(conn, EXPIRED)
                continue
            conn.expire_at = expire_at
            if expire_at:
                if info is not None:
                    conn.info = info
                self._expiry.add(expire_at + self.cfg.client_expired_close_delay, conn.client_id)
                push = codec.refresh_push(conn.v2, True, max(0, expire_at - int(now)))
            else:
                push = codec.refresh_push(conn.v2, False, 0)
            self.fanout.enqueue(conn, codec.frame_text(push))

    def local_presence(self, channel: str) -> dict[str, dict]:
        """Presence of this worker's connections in `channel` (06 §4.7 ClientInfo values)."""
        members = {}
        for hub in (self.hub, self.hub_v2):
            for conn in each_member(hub.get(channel)):
                sub = conn.channels[channel]
                if sub.presence:
                    members[conn.client_id] = self._presence_info(conn, sub)
        return members

    async def presence(self, channel: str) -> dict[str, dict]:
        if not self._options(channel).presence:
            raise ApiError(108)
        members = self.local_presence(channel)
        if self.cluster is not None:
            for other in await self.cluster.survey("presence", {"channel": channel}):
                members.update(other)
        return members

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        members = await self.presence(channel)
        return len(members), len({info["user"] for info in members.values()})

    async def history(self, channel: str, *, limit: int, since: tuple[int, str] | None,
                      reverse: bool) -> tuple[list[dict], int, str]:
        if not self._options(channel).history_enabled:
            raise ApiError(108)
        pubs, top, epoch = await self.engine.history(channel, since=since, limit=limit, reverse=reverse)
        return [self._publication_dict(p) for p in pubs], top, epoch

    @staticmethod
    def _publication_dict(pub: Publication) -> dict:
        item: dict = {"data": orjson.Fragment(pub.data)}
        if pub.offset:
            item["offset"] = pub.offset
        if pub.tags:
            item["tags"] = pub.tags
        return item

    async def history_remove(self, channel: str) -> None:
        if not self._options(channel).history_enabled:
            raise ApiError(108)
        await self.engine.remove_history(channel)

    def local_channels(self, pattern: str) -> dict[str, int]:
        match = compile_glob(pattern) if pattern else None
        counts: dict[str, int] = {}
        for hub in (self.hub, self.hub_v2):
            for channel, subscribers in hub.items():
                if match is None or match(channel):
                    counts[channel] = counts.get(channel, 0) + count_members(subscribers)
        return counts

    async def channels(self, pattern: str) -> dict[str, int]:
        try:
            counts = self.local_channels(pattern)
        except ValueError:
            raise ApiError(100) from None
        if self.cluster is not None:
            for other in await self.cluster.survey("channels", {"pattern": pattern}):
                for channel, n in other.items():
                    counts[channel] = counts.get(channel, 0) + n
        return counts

    def stats(self) -> dict:
        """This worker's figures (06 §4.12 node fields, plus engine and bus gauges)."""
        entry = {
            "uid": self.uid, "name": self.name, "version": self.version, "worker": self.index,
            "num_clients": sum(1 for c in self.conns.values() if c.state == CONNECTED),
            "num_users": len(self.users),
            "num_channels": len(set(self.hub) | set(self.hub_v2)),
            "num_subs": sum(count_members(s) for hub in (self.hub, self.hub_v2) for s in hub.values()),
        }
        uptime = int(time.time() - self.started)
        if uptime:
            entry["uptime"] = uptime
        presence_channels = sum(1 for hub in (self.hub, self.hub_v2) for channel, subscribers in hub.items()
                                if any(conn.channels[channel].presence for conn in each_member(subscribers)))
        items = {"uniws.engine.streams": float(self.engine.num_streams()),
                 "uniws.node.publications": float(self.publications),
                 "uniws.node.presence_channels": float(presence_channels),
                 "uniws.ws.listener_exceptions": float(BOUNDARY.listener_exceptions),
                 "uniws.ws.client_protocol_errors": float(BOUNDARY.client_protocol_errors)}
        if self.proxy is not None:
            items.update(self.proxy.stats())
        if self.cluster is not None:
            items.update({f"uniws.bus.{k}": float(v) for k, v in self.cluster.bus.stats().items()})
            items["uniws.bus.overflows"] = float(self.cluster.overflows)
            items["uniws.node.sequenced"] = float(self.cluster.sequenced)
        entry["metrics"] = {"interval": float(self.tick), "items": items}
        return entry

    async def info(self) -> list[dict]:
        """One node entry for the whole process group: sums over workers, per-worker figures under
        `workers` (num_users and num_channels count a user or channel once per worker)."""
        workers = [self.stats()]
        if self.cluster is not None:
            workers += await self.cluster.survey("stats", {})
            workers.sort(key=lambda w: w["worker"])
        node = {key: value for key, value in workers[0].items() if key != "worker"}
        for key in ("num_clients", "num_users", "num_channels", "num_subs"):
            node[key] = sum(w[key] for w in workers)
        node["metrics"] = {"interval": workers[0]["metrics"]["interval"], "items": {
            key: sum(w["metrics"]["items"].get(key, 0.0) for w in workers)
            for key in workers[0]["metrics"]["items"]}}
        if len(workers) > 1:
            node["workers"] = workers
        return [node]

    # -- shutdown ----------------------------------------------------------------------------

    async def shutdown(self, timeout: float) -> bool:
        """Disconnect every client with 3001 and wait for them to go; False on timeout."""
        self.shutting_down = True
        if self._timer is not None:
            self._timer.cancel()
        for conn in list(self.conns.values()):
            if conn.state == CONNECTED:
                self.disconnect_conn(conn, SHUTDOWN)
            else:
                self._close_silently(conn)
        deadline = time.monotonic() + timeout
        while self.conns and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self.proxy is not None:
            await self.proxy.client.close()
        return not self.conns


# A member index maps a key (user, channel) to its connections. One connection is stored
# as itself, several as a dict (insertion-ordered, O(1) removal): most users have one
# connection and most personal channels one subscriber, so an idle client pays for no dict.
Members = Conn | dict


def add_member(index: dict, key: str, conn: Conn) -> None:
    current = index.get(key)
    if current is None:
        index[key] = conn
    elif type(current) is Conn:
        if current is not conn:
            index[key] = {current: None, conn: None}
    else:
        current[conn] = None


def remove_member(index: dict, key: str, conn: Conn) -> None:
    current = index.get(key)
    if current is conn:
        del index[key]
    elif type(current) is dict:
        current.pop(conn, None)
        if len(current) == 1:
            index[key] = next(iter(current))


def each_member(value) -> Iterable[Conn]:
    if value is None:
        return ()
    return (value,) if type(value) is Conn else value


def count_members(value) -> int:
    if value is None:
        return 0
    return 1 if type(value) is Conn else len(value)


def _fragment(raw: bytes | None):
    """Raw JSON carried inside a bus command (decoded back by `_raw_fields`)."""
    return orjson.Fragment(raw) if raw is not None else None


def _raw_fields(args: dict, *names: str) -> dict:
    for name in names:
        if args.get(name) is not None:
            args[name] = orjson.dumps(args[name])
    if args.get("recover_since") is not None:
        args["recover_since"] = tuple(args["recover_since"])
    return args
