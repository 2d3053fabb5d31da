"""Connections' lives on one worker: connect, server-side subscribe, recovery, expiry, close.

`Sessions` is what picows's `Conn` calls (conn_open / conn_message / conn_lost ...) and
what the node calls to apply user-targeted commands to the connections here. The
decisions that need no I/O are plain functions (`connect_subscriptions`,
`recovery_outcome`, `catch_up`) and are unit-tested as such; the class strings them
together with the engine's answers and the hub's indexes.

A positioned subscription is registered with the hub's buffer before its stream
position is read; publications that arrive meanwhile are merged by offset (`catch_up`)
so none falls between the position the client is told and its first live push (05 §8.5).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from . import codec
from ._fastpath import CLOSED, CONNECTED, CONNECTING, Conn, frame_text
from .auth import Credentials, TokenError
from .eager import run_eager
from .engine.base import Publication
from .errors import (BAD_REQUEST, CHANNEL_LIMIT, CONNECTION_CLOSED, CONNECTION_LIMIT, EXPIRED, INSUFFICIENT_STATE,
                     INTERNAL, INVALID_TOKEN, SLOW, STALE, SUB_EXPIRED, WRITE_ERROR, ApiError, Disconnect)
from .hub import Buffered, Subscription
from .ids import new_id
from .protocol import ConnectRequest, ConnectRequestError, SubHint, parse_connect_request
from .proxy import ConnContext, Headers
from .resume import CursorEntry, CursorError, CursorState, Signer, resume_hints, with_cursor

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("uniws.session")

# A resume cursor that is not ours, altered, or another user's: the connect is refused.
CURSOR_REFUSED = Disconnect(3501, "invalid resume cursor", False)


def _override(value: bool | None, default: bool) -> bool:
    return default if value is None else value


# -- decisions without I/O ------------------------------------------------------------------

def connect_subscriptions(rules, cfg, creds: Credentials | None, user: str,
                          request: ConnectRequest) -> dict[str, Subscription]:
    """The server-side subscriptions a connect gets (04 §5): the token's, the personal
    channel, and the client-requested ones it may have. Raises Disconnect."""
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
    has_credentials = creds is not None or cfg.client_anonymous or cfg.client_insecure
    if has_credentials and cfg.user_subscribe_to_personal and user:
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


def recovery_outcome(hint: SubHint, top: int, epoch: str, pubs: list[Publication]) -> tuple[bool, int]:
    """(recovered, offset to report) of a connect-time recovery (05 §8), given the stream's
    top and epoch and the publications after the client's offset."""
    if hint.epoch and hint.epoch != epoch:
        recovered = False
    elif not pubs:
        recovered = top == hint.offset
    else:
        recovered = pubs[0].offset == hint.offset + 1 and pubs[-1].offset == top
    return recovered, max(top, pubs[-1].offset if pubs else 0)


def catch_up(epoch: str, offset: int, buffered: Buffered) -> tuple[list[Publication], int] | None:
    """What to deliver of the publications that arrived while a position was read, keeping
    offsets contiguous: (publications, new offset), or None on a gap or another epoch."""
    deliver = []
    for pub, pub_epoch in buffered:
        if pub.offset == 0:
            deliver.append(pub)
        elif pub_epoch == epoch and pub.offset <= offset:
            continue                              # already in the connect push or history
        elif pub_epoch == epoch and pub.offset == offset + 1:
            deliver.append(pub)
            offset = pub.offset
        else:
            return None
    return deliver, offset


# -- the sessions of one worker ----------------------------------------------------------------

class Sessions:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.cfg = node.cfg
        self.loop = node.loop
        self.hub = node.hub
        self.fanout = node.fanout
        self.conns: dict[str, Conn] = {}                 # every open connection by client id
        # Per connection that may call a proxy later: captured headers (until connected), then
        # headers and meta of connections the refresh proxy will be asked about. Others: no entry.
        self._proxy_ctx: dict[str, ConnContext] = {}
        self._refreshing: set[str] = set()       # refresh proxy calls in flight, by client id
        self.connects = 0                        # connections opened (metrics)
        self.disconnects: dict[int, int] = {}    # server-side disconnect code -> count (metrics)
        # uni_websocket_resume: the cursor signer (key read at start), and `cf_resume` values of
        # connections still waiting for their connect message.
        self.signer = Signer.from_config(self.cfg)
        self._resume_param: dict[str, str] = {}

    @property
    def proxy(self):
        return self.node.proxy

    # -- events from Conn (picows) --------------------------------------------------------

    def new_conn(self, v2: bool, connect_request: ConnectRequest | None, headers: Headers = (),
                 resume: str = "") -> Conn:
        """A connection being upgraded; `headers`: its request's proxy_http_headers (picows calls
        conn_open within the same upgrade, and conn_lost drops the entry)."""
        conn = Conn()
        conn.node = self
        conn.v2 = v2
        conn.size_limit = self.cfg.uni_websocket_message_size_limit
        conn.connect_request = connect_request
        conn.client_id = new_id()
        conn.channels = {}
        if headers:
            self._proxy_ctx[conn.client_id] = ConnContext(headers, None)
        if resume:
            self._resume_param[conn.client_id] = resume
        return conn

    def conn_open(self, conn: Conn) -> None:
        node = self.node
        if node.shutting_down:
            conn.close_transport(False)
            return
        self.conns[conn.client_id] = conn
        self.connects += 1
        if node.ping_interval:
            node.wheel.add(conn)
        if conn.connect_request is not None:
            self._start_connect(conn, conn.connect_request)
        else:
            node.stale.add(time.time() + self.cfg.client_stale_close_delay, conn.client_id)

    def conn_message(self, conn: Conn, payload: bytes) -> None:
        if conn.state != CONNECTING or conn.close_reason is not None:
            return
        try:
            request = parse_connect_request(payload)
        except ConnectRequestError as exc:
            log.info("closing client %s: bad connect request (%s)", conn.client_id, exc)
            self.close_silently(conn)
            return
        self._start_connect(conn, request)

    def conn_close_frame(self, conn: Conn, code: int | None) -> None:
        """The client sent a close frame: echo its code with an empty reason, close TCP (01 §8.2)."""
        frame = b"\x88\x00" if code is None else b"\x88\x02" + int(code).to_bytes(2, "big")
        self._terminate(conn, CONNECTION_CLOSED, frame)

    def conn_too_big(self, conn: Conn) -> None:
        log.info("closing client %s: message over uni_websocket_message_size_limit", conn.client_id)
        self._terminate(conn, CONNECTION_CLOSED, b"\x88\x02\x03\xf1")   # 1009, empty reason

    def conn_lost(self, conn: Conn) -> None:
        try:
            self._forget(conn)
        except Exception:
            log.exception("cleanup of client %s failed", conn.client_id)

    # -- ending connections -------------------------------------------------------------------

    def close_silently(self, conn: Conn) -> None:
        self._terminate(conn, CONNECTION_CLOSED, None)

    def disconnect(self, conn: Conn, reason: Disconnect) -> None:
        """Server-side termination (01 §8.1): leave channels, Disconnect push, TCP close."""
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
        self._leave_all(conn)
        if last is not None:
            conn.write_now(last)
        conn.close_transport(True)
        if conn.queued:
            # The graceful close waits for the peer to read what is still queued; one that takes
            # nothing more (a slow client, typically) must not keep the socket and queue forever.
            self.loop.call_later(max(self.cfg.uni_websocket_write_timeout, 1.0), _abort_closing, conn)

    def close_slow(self) -> None:
        """Fanout callback after a flush that found clients over client_queue_max_size."""
        slow, self.fanout.slow = self.fanout.slow, []
        limit = self.fanout.queue_max
        for conn in slow:
            # Runs right after the flush: a client that went over the limit within one loop turn
            # (e.g. one API request publishing a lot) but whose socket took it all is not slow.
            if conn.close_reason is None and conn.state != CLOSED and conn.queued > limit:
                log.info("closing client %s: %d bytes queued exceed client_queue_max_size",
                         conn.client_id, conn.queued)
                self.disconnect(conn, SLOW)

    def close_unresponsive(self, dead: list[Conn], stuck: list[Conn]) -> None:
        for conn in dead:
            log.info("closing client %s: no pong within the read deadline", conn.client_id)
            self.close_silently(conn)
        for conn in stuck:
            log.info("closing client %s: socket refused writes for over %s s", conn.client_id,
                     self.cfg.uni_websocket_write_timeout)
            self.disconnect(conn, WRITE_ERROR)

    def _forget(self, conn: Conn) -> None:
        """Drop every reference to a closed connection (idempotent)."""
        self.conns.pop(conn.client_id, None)
        self._proxy_ctx.pop(conn.client_id, None)
        if self._resume_param:
            self._resume_param.pop(conn.client_id, None)
        self._leave_all(conn)
        if self.hub.cursors:
            self.hub.cursors.pop(conn, None)
        if conn.user is not None:
            self.hub.remove_user(conn)

    def reset_all(self) -> None:
        """This worker may have missed publications: every client reconnects and recovers."""
        for conn in list(self.conns.values()):
            if conn.state == CONNECTED:
                self.disconnect(conn, INSUFFICIENT_STATE)

    def close_all(self, reason: Disconnect) -> None:
        for conn in list(self.conns.values()):
            if conn.state == CONNECTED:
                self.disconnect(conn, reason)
            else:
                self.close_silently(conn)

    # -- deadlines (the node's tick) ------------------------------------------------------------

    def check_stale(self, conn: Conn, now: float) -> None:
        if conn.state == CONNECTING:
            self.disconnect(conn, STALE)

    def check_expiry(self, conn: Conn, now: float) -> None:
        if conn.expire_at <= 0:
            return
        if self.proxy is not None and self.proxy.refresh_endpoint:
            self._check_refresh(conn, now)
            return
        due = conn.expire_at + self.cfg.client_expired_close_delay
        if now >= due:
            self.disconnect(conn, EXPIRED)
        else:
            self.node.expiry.add(due, conn.client_id)

    def check_sub_expiry(self, conn: Conn, now: float) -> None:
        delay = self.cfg.client_expired_sub_close_delay
        for sub in conn.channels.values():
            if sub.expire_at and now > sub.expire_at + delay:
                self.disconnect(conn, SUB_EXPIRED)
                return

    def _check_refresh(self, conn: Conn, now: float) -> None:
        """Server-side refresh (04 §6.3): ask the refresh proxy at the expiration moment."""
        if conn.client_id in self._refreshing:
            return                                  # its outcome schedules the next check
        if now < conn.expire_at:
            self.node.expiry.add(conn.expire_at, conn.client_id)
            return
        self._refreshing.add(conn.client_id)
        self.node.track(self.loop.create_task(self._refresh_via_proxy(conn)))

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
            self.disconnect(conn, outcome.disconnect)
            return
        conn.expire_at = outcome.expire_at
        if outcome.info is not None:
            self._set_info(conn, outcome.info)
        self.node.expiry.add(outcome.expire_at, client_id)

    def _set_info(self, conn: Conn, info: bytes) -> None:
        """New connection info: presence shows it at once (not at the next presence update)."""
        conn.info = info
        engine = self.node.engine
        for channel, sub in conn.channels.items():
            if sub.presence:
                self.node.run_soon(engine.add_presence(channel, conn.client_id, self._client_info(conn, sub)))

    # -- connect (spec 05 §5) -------------------------------------------------------------------

    def _start_connect(self, conn: Conn, request: ConnectRequest) -> None:
        # While it runs the request stays on the connection: Conn then drops any further message
        # (01 §4.1), so a client cannot start a second connect while the first waits.
        conn.connect_request = request
        if self._asks_connect_proxy(request):
            # The backend call waits for the network, and aiohttp's timeouts need a task.
            self.node.track(self.loop.create_task(self._connect(conn, request)))
            return
        # Run now: a JWT connect rarely waits (only for a channel position owned by another
        # worker, or a broker), and a task per connect costs as much as the JWT check.
        waiting = run_eager(self._connect(conn, request))
        if waiting is not None:
            self.node.track(waiting)

    def _asks_connect_proxy(self, request: ConnectRequest) -> bool:
        """A connect without a token goes to the connect proxy when there is one (08 §2.1)."""
        return not request.token and self.proxy is not None and bool(self.proxy.connect_endpoint)

    async def _connect(self, conn: Conn, request: ConnectRequest) -> None:
        try:
            await self._do_connect(conn, request)
        except Disconnect as reason:
            log.info("connect of client %s rejected: %d %s", conn.client_id, reason.code, reason.reason)
            self.disconnect(conn, reason)
        except Exception:
            log.exception("connect of client %s failed", conn.client_id)
            self.disconnect(conn, INTERNAL)
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
            if channel and self.node.rules.options(channel) is None:
                raise INTERNAL           # error 102 during connect becomes 3004 (03 §4)

    def _credentials(self, request: ConnectRequest, now: float) -> Credentials | None:
        if not request.token:
            return None
        try:
            creds = self.node.verifier.verify(request.token, now)
        except TokenError as exc:
            log.info("token rejected: %s", exc)
            if exc.kind == "expired":
                raise EXPIRED from None
            raise (INVALID_TOKEN if exc.kind == "invalid" else INTERNAL) from None
        self._check_namespaces(creds)
        return creds

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
        subs = connect_subscriptions(self.node.rules, cfg, creds, user, request)
        if len(subs) > cfg.client_channel_limit:
            raise CHANNEL_LIMIT
        if creds is None and not (cfg.client_anonymous or cfg.client_insecure):
            raise BAD_REQUEST
        limit = cfg.client_user_connection_limit
        if limit and user and self.hub.user_connections(user) >= limit:
            raise CONNECTION_LIMIT
        expire_at = 0 if cfg.client_insecure or creds is None else creds.expire_at
        if 0 < expire_at < int(now):
            raise EXPIRED
        param = self._resume_param.pop(conn.client_id, "") if self._resume_param else ""
        cursor_text = request.resume or param             # the connect command's field wins
        cursor_hints = self._cursor_hints(conn, cursor_text, user, subs, request) if cursor_text else {}

        # Every channel is wanted (a broker starts carrying it) before any position is read,
        # and positioned channels buffer what arrives until the client is in the hub.
        channels = list(subs)
        positioned = [channel for channel, sub in subs.items() if sub.positioned]
        for channel in channels:
            self.hub.want(channel)
        try:
            self.hub.begin_buffer(conn, positioned)
            try:
                await self.node.receiving(channels)
                results: dict[str, bytes] = {}
                for channel, sub in subs.items():
                    if sub.positioned:
                        hint = cursor_hints.get(channel) or request.subs.get(channel)
                        results[channel] = await self._positioned_result(channel, sub, hint)
                    else:               # nothing to read: no coroutine per channel
                        results[channel] = codec.subscribe_result(data=sub.data)
            finally:
                buffered = self.hub.end_buffer(conn, positioned)
            if conn.close_reason is not None or conn.state == CLOSED:
                return                                    # the client went away meanwhile
            self._become_connected(conn, creds, user, expire_at, now, results, subs)
            for channel, sub in subs.items():
                self.hub.add(conn, channel, sub)
        finally:
            for channel in channels:
                self.hub.unwant(channel)
        for channel in positioned:
            if not self._catch_up(conn, channel, subs[channel], buffered[channel]):
                return
        if self.proxy is not None:
            self._keep_proxy_context(conn, creds)
        if expire_at:
            # The refresh proxy is asked at the expiration moment; without it the connection gets
            # client_expired_close_delay more (04 §6.2, 6.3).
            refreshed = self.proxy is not None and bool(self.proxy.refresh_endpoint)
            self.node.expiry.add(expire_at if refreshed else expire_at + cfg.client_expired_close_delay,
                                 conn.client_id)
        for channel, sub in subs.items():
            if sub.presence or sub.join_leave:
                await self._joined(conn, channel, sub)
        if cfg.user_personal_single_connection and user:
            await self.node.disconnect(user, whitelist=[conn.client_id], disconnect=CONNECTION_LIMIT)
        log.debug("client %s connected as user %r with %d channels", conn.client_id, user, len(subs))

    def _cursor_hints(self, conn: Conn, text: str, user: str, subs: dict[str, Subscription],
                      request: ConnectRequest) -> dict[str, CursorEntry]:
        """The cursor's positions for the recoverable channels this connect has; a `subs` hint
        with `recover: true` wins over the cursor. A cursor that fails verification: 3501."""
        if self.signer is None:
            log.info("client %s sent a resume cursor but uni_websocket_resume is off: ignored", conn.client_id)
            return {}
        try:
            entries = self.signer.decode(text, user)
        except CursorError as exc:
            log.info("client %s: resume cursor refused (%s)", conn.client_id, exc)
            raise CURSOR_REFUSED from None
        wanted = [channel for channel, sub in subs.items() if sub.recover
                  and not ((explicit := request.subs.get(channel)) is not None and explicit.recover)]
        return resume_hints(entries, wanted)

    def _become_connected(self, conn: Conn, creds: Credentials | None, user: str, expire_at: int, now: float,
                          results: dict[str, bytes], subs: dict[str, Subscription]) -> None:
        conn.user = user
        conn.info = creds.info if creds is not None else None
        conn.expire_at = expire_at
        conn.session = new_id()
        conn.state = CONNECTED
        self.hub.add_user(conn)
        # With a refresh proxy the server refreshes: the client is told no expiry (04 §6.3).
        refreshed = self.proxy is not None and bool(self.proxy.refresh_endpoint)
        client_expires = bool(expire_at) and not refreshed
        ttl = max(0, expire_at - int(now)) if client_expires else 0
        push = codec.connect_push(conn.v2, client=conn.client_id, version=self.node.version, subs=results,
                                  expires=client_expires, ttl=ttl, session=conn.session,
                                  ping=25 if conn.v2 else 0, data=creds.data if creds is not None else None)
        if self.signer is not None:
            # The cursor covers the positions this push reports (recovered publications included).
            state = CursorState(self.signer, user)
            for channel, sub in subs.items():
                if sub.recover:
                    state.track(channel, sub.epoch, sub.offset)
            self.hub.cursors[conn] = state
            push = with_cursor(push, state.tail())
        self.fanout.enqueue(conn, frame_text(push))      # _fastpath's: one allocation

    def _catch_up(self, conn: Conn, channel: str, sub: Subscription, buffered: Buffered) -> bool:
        """Deliver what arrived while the position was read; a gap, an epoch change or another
        position already delivered here means the client cannot be exact: 3010."""
        merged = catch_up(sub.epoch, sub.offset, buffered)
        if merged is None:
            self.disconnect(conn, INSUFFICIENT_STATE)
            return False
        pubs, sub.offset = merged
        for pub in pubs:
            self.hub.deliver_one(conn, channel, pub)
        if not self.hub.note_position(conn, channel, sub.epoch, sub.offset):
            log.info("client %s position %s:%d behind what was delivered on %s", conn.client_id, sub.epoch,
                     sub.offset, channel)
            self.disconnect(conn, INSUFFICIENT_STATE)
            return False
        return True

    async def _positioned_result(self, channel: str, sub: Subscription, hint: SubHint | None) -> bytes:
        engine = self.node.engine
        if sub.recover and hint is not None and (type(hint) is CursorEntry or hint.recover):
            return await self._recover(channel, sub, hint)
        sub.offset, sub.epoch = await engine.stream_top(channel)
        return codec.subscribe_result(recoverable=sub.recover, epoch=sub.epoch, offset=sub.offset,
                                      positioned=True, data=sub.data)

    async def _recover(self, channel: str, sub: Subscription, hint: SubHint | CursorEntry) -> bytes:
        """Connect-time recovery (05 §8); a cursor entry stands for the hint it matches."""
        engine = self.node.engine
        top, epoch = await engine.stream_top(channel)
        if type(hint) is CursorEntry:
            hint = hint.hint(epoch)
        pubs: list[Publication] = []
        if not (hint.epoch and hint.epoch != epoch) and hint.offset < top:
            limit = self.cfg.client_recovery_max_publication_limit
            pubs, top, epoch = await engine.history(channel, since=(hint.offset, ""),
                                                    limit=limit if limit > 0 else -1, reverse=False)
        recovered, sub.offset = recovery_outcome(hint, top, epoch, pubs)
        sub.epoch = epoch
        encoded = [codec.publication(p.data, p.offset, codec.tags_object(p.tags)) for p in pubs]
        return codec.subscribe_result(recoverable=True, epoch=epoch, publications=encoded,
                                      recovered=recovered, offset=sub.offset, positioned=True, data=sub.data)

    # -- joining and leaving channels -------------------------------------------------------------

    async def _joined(self, conn: Conn, channel: str, sub: Subscription) -> None:
        """After a subscription is in the hub: presence and the Join push."""
        engine = self.node.engine
        if sub.presence:
            await engine.add_presence(channel, conn.client_id, self._client_info(conn, sub))
        if sub.join_leave:
            engine.publish_join_leave(channel, True, self._client_info(conn, sub))

    def leave(self, conn: Conn, channel: str) -> Subscription | None:
        """Unsubscribe: Leave to the channel's subscribers (the leaving one first), presence removed."""
        sub = conn.channels.get(channel)
        if sub is None:
            return None
        engine = self.node.engine
        self.hub.remove(conn, channel)
        if sub.join_leave and conn.state == CONNECTED:
            # The leaving connection gets its own Leave first, then everyone still there.
            info = self._client_info(conn, sub)
            self.hub.join_leave_to(conn, channel, False, info)
            engine.publish_join_leave(channel, False, info)
        if sub.presence:
            self.node.run_soon(engine.remove_presence(channel, conn.client_id))
        return sub

    def _leave_all(self, conn: Conn) -> None:
        if not conn.channels:
            return
        for channel in list(conn.channels):
            self.leave(conn, channel)

    def _client_info(self, conn: Conn, sub: Subscription) -> bytes:
        return codec.client_info(conn.user or "", conn.client_id, conn.info, sub.chan_info)

    # -- user-targeted commands, applied to this worker's connections ----------------------------

    async def subscribe_local(self, user: str, channel: str, client: str, session: str, info: bytes | None,
                              data: bytes | None, expire_at: int, recover_since, override: dict) -> None:
        opts = self.node.channel_options(channel)
        conns = self.hub.matching(user, client, session)
        if not conns:
            return
        if expire_at and expire_at <= time.time():
            raise ApiError(100)
        for conn in conns:
            if channel not in conn.channels and len(conn.channels) >= self.cfg.client_channel_limit:
                self.disconnect(conn, CHANNEL_LIMIT)
                continue
            sub = Subscription(presence=override.get("presence", opts.presence),
                               join_leave=override.get("join_leave", opts.join_leave),
                               recover=override.get("recover", opts.recover),
                               position=override.get("position", opts.position),
                               chan_info=info, data=data, expire_at=expire_at)
            await self._subscribe_one(conn, channel, sub, recover_since)

    async def _subscribe_one(self, conn: Conn, channel: str, sub: Subscription, recover_since) -> None:
        self.hub.want(channel)
        try:
            buffered: Buffered = []
            if sub.positioned:
                self.hub.begin_buffer(conn, [channel])
                try:
                    await self.node.receiving([channel])
                    sub.offset, sub.epoch = await self.node.engine.stream_top(channel)
                finally:
                    buffered = self.hub.end_buffer(conn, [channel])[channel]
            else:
                await self.node.receiving([channel])
            if conn.close_reason is not None or conn.state != CONNECTED:
                return
            reported = max(sub.offset, recover_since[0]) if recover_since else sub.offset
            self.hub.remove(conn, channel)
            payload = codec.subscribe_payload(recoverable=sub.recover, epoch=sub.epoch, offset=reported,
                                              positioned=sub.positioned, data=sub.data)
            self.fanout.enqueue(conn, codec.frame_text(
                codec.envelope(conn.v2, codec.SUBSCRIBE, codec.json_string(channel), payload)))
            self.hub.add(conn, channel, sub)
        finally:
            self.hub.unwant(channel)
        if sub.positioned and not self._catch_up(conn, channel, sub, buffered):
            return
        await self._joined(conn, channel, sub)
        if sub.expire_at:
            self.node.sub_expiry.add(sub.expire_at + self.cfg.client_expired_sub_close_delay + 0.001,
                                     conn.client_id)

    def unsubscribe_local(self, user: str, channel: str, client: str, session: str) -> None:
        for conn in self.hub.matching(user, client, session):
            self.leave(conn, channel)
            self.fanout.enqueue(conn, codec.frame_text(codec.unsubscribe_push(conn.v2, channel)))

    def disconnect_local(self, user: str, client: str, session: str, whitelist: list[str],
                         reason: Disconnect) -> None:
        keep = set(whitelist)
        for conn in self.hub.matching(user, client, session):
            if conn.client_id not in keep:
                self.disconnect(conn, reason)

    def refresh_local(self, user: str, client: str, session: str, expired: bool, expire_at: int,
                      info: bytes | None) -> None:
        now = time.time()
        for conn in self.hub.matching(user, client, session):
            if expired or (expire_at and expire_at <= now):
                self.disconnect(conn, EXPIRED)
                continue
            conn.expire_at = expire_at
            if expire_at:
                if info is not None:
                    self._set_info(conn, info)
                self.node.expiry.add(expire_at + self.cfg.client_expired_close_delay, conn.client_id)
                push = codec.refresh_push(conn.v2, True, max(0, expire_at - int(now)))
            else:
                push = codec.refresh_push(conn.v2, False, 0)
            self.fanout.enqueue(conn, codec.frame_text(push))

    def num_clients(self) -> int:
        return sum(1 for c in self.conns.values() if c.state == CONNECTED)


def _abort_closing(conn: Conn) -> None:
    if conn.state != CLOSED and conn.queued:
        conn.close_transport(False)

