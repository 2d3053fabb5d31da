"""The per-worker node: the facade the API and the transport call, and the engine's handler.

One Node per worker process holds that worker's state (no module globals), in
three parts with one job each:
  hub.Hub            who is connected here and subscribed to what; encode-once delivery
  session.Sessions   each connection's life: connect, subscribe, recovery, expiry, close
  engine             streams, history, presence and other workers/nodes (engine/base.py)
The node wires them, runs the per-worker tick (pings, deadlines, sweeps), serves the
server API's methods, and sends node-wide commands to the other workers (the bus) and
nodes (the engine).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import time
import uuid
from typing import Any, Iterable

import orjson

from . import __version__
from ._fastpath import Conn, Fanout, PingWheel
from .auth import TokenVerifier
from .channels import ChannelOptions, ChannelRules, channel_name_ok
from .cluster import Cluster
from .deadlines import Deadlines
from .eager import run_eager
from .engine.base import Publication
from .engine.memory import MemoryEngine
from .engine.redis import RedisEngine
from .engine.relay import BrokerRelay
from .engine.sharded import ShardedEngine
from .errors import FORCE_DISCONNECT, SHUTDOWN, ApiError, Disconnect
from .hub import Hub
from .protocol import ConnectRequest
from .proxy import Headers, Proxy
from .session import Sessions
from .transport import BOUNDARY

log = logging.getLogger("uniws.node")

_RELOADABLE = ("token_hmac_secret_key", "token_rsa_public_key", "token_ecdsa_public_key", "token_audience",
               "token_issuer", "channel_options", "namespaces", "channel_private_prefix",
               "channel_namespace_boundary", "channel_user_boundary", "channel_user_separator",
               "user_subscribe_to_personal", "user_personal_channel_namespace",
               "user_personal_single_connection", "client_insecure", "client_anonymous",
               *(f.name for f in dataclasses.fields(ChannelOptions)))
_OPTIONS_CACHED = 1 << 16      # channels whose options a worker remembers (then it starts over)


class Node:
    def __init__(self, cfg, loop: asyncio.AbstractEventLoop, *, index: int = 0, count: int = 1,
                 uid: str | None = None) -> None:
        self.cfg = cfg
        self.loop = loop
        self.index = index
        self.rules = ChannelRules.from_config(cfg)
        self.verifier = TokenVerifier.from_config(cfg)
        self.proxy = Proxy.from_config(cfg)
        self.uid = uid or str(uuid.uuid4())
        self.name = cfg.name or f"{socket.gethostname()}_{cfg.port}"
        self.version = __version__
        self.started = time.time()
        self.shutting_down = False
        self._tasks: set[asyncio.Future] = set()
        self._subscribing: dict[str, asyncio.Future] = {}   # broker subscriptions under way
        self._node_info: dict | None = None                  # see node_info()
        # channel -> options, for channels named in API calls: a publish looks its channel up
        # once instead of checking the name and finding the namespace each time. Bounded.
        self._options_of: dict[str, ChannelOptions] = {}

        self.fanout = Fanout(loop, cfg.client_queue_max_size, self._close_slow)
        self.hub = Hub(self.fanout, self._drop, self._first_subscriber, self._last_subscriber)
        # The engine calls these on every publication: bound straight to the hub.
        self.handle_publication = self.hub.handle_publication
        self.handle_join_leave = self.hub.handle_join_leave
        self.wanted = self.hub.wanted
        self.cluster: Cluster | None = None
        self.engine = self._make_engine(index, count)
        # An engine that may answer later: pipelined API requests then wait for the one before
        # to dispatch all its commands, so publications keep request order (api.py).
        self.pipelined = not isinstance(self.engine, MemoryEngine)
        # Engines holding every publication in this node need no subscription per channel (a
        # connect storm would otherwise run a no-op coroutine for each personal channel).
        self._subscribes = not isinstance(self.engine, (MemoryEngine, ShardedEngine))
        self.sessions = Sessions(self)
        self.conns = self.sessions.conns

        self.stale = Deadlines()
        self.expiry = Deadlines()
        self.sub_expiry = Deadlines()
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
        self.metrics = None            # metrics.WorkerMetrics, set by server.py when enabled

    def _make_engine(self, index: int, count: int):
        meta_ttl = self.cfg.history_meta_ttl
        if self.cfg.engine == "redis":
            if count == 1:
                return RedisEngine.from_config(self.cfg, self, node_uid=self.uid, control=True)
            self.cluster = Cluster(self, index, count, None)
            relay = BrokerRelay(self.cluster, None)
            relay.broker = RedisEngine.from_config(self.cfg, relay, node_uid=self.uid, control=index == 0)
            return relay
        if count == 1:
            return MemoryEngine(self, self.loop, history_meta_ttl=meta_ttl)
        # Streams are sharded over the workers; the bus is attached by the server.
        local = MemoryEngine(None, self.loop, history_meta_ttl=meta_ttl)
        self.cluster = Cluster(self, index, count, local)
        local.set_handler(self.cluster)
        return ShardedEngine(self.cluster)

    def reload(self, cfg) -> None:
        """Apply a re-read config's token keys and channel rules (07 §7.1); the rest needs a restart."""
        fields = {name: getattr(cfg, name) for name in _RELOADABLE}
        verifier = TokenVerifier.from_config(cfg)          # raises on a bad key: nothing changes
        rules = ChannelRules.from_config(cfg)
        self.cfg = dataclasses.replace(self.cfg, **fields)
        self.sessions.cfg = self.cfg
        self.verifier, self.rules = verifier, rules
        self._options_of = {}

    # -- tasks -------------------------------------------------------------------------------

    def track(self, task: asyncio.Future) -> None:
        """Keep a reference to a short-lived task (or eager run's future) until it is done."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def run_soon(self, coro: Any) -> None:
        """Run a coroutine now; one that waits goes on in the background, its failure logged."""
        try:
            waiting = run_eager(coro)
        except Exception:
            log.exception("background work failed")
            return
        if waiting is not None:
            self.track(waiting)
            waiting.add_done_callback(_log_failure)

    # -- periodic work ---------------------------------------------------------------------

    def start(self) -> None:
        self._timer = self.loop.call_later(self.tick, self._on_tick)

    def _on_tick(self) -> None:
        self._timer = self.loop.call_later(self.tick, self._on_tick)
        try:
            if self.ping_interval:
                self.wheel.tick()
                dead, self.wheel.dead = self.wheel.dead, []
                stuck, self.wheel.stuck = self.wheel.stuck, []
                if dead or stuck:
                    self.sessions.close_unresponsive(dead, stuck)
            self._run_deadlines(time.time())
            self.engine.sweep()
            if self.cluster is not None:
                self.cluster.expire_requests(time.monotonic())
                if self.index == 0 and self.cluster.relay is not None:
                    self.run_soon(self._refresh_node_info())
            if self.http is not None:
                self.http.sweep(time.monotonic())
        except Exception:
            log.exception("periodic tick failed")

    def _run_deadlines(self, now: float) -> None:
        sessions = self.sessions
        for check, deadlines in ((sessions.check_stale, self.stale), (sessions.check_expiry, self.expiry),
                                 (sessions.check_sub_expiry, self.sub_expiry)):
            for client_id in deadlines.pop_due(now):
                conn = self.conns.get(client_id)
                if conn is not None and conn.close_reason is None:
                    check(conn, now)

    # -- the transport's calls -----------------------------------------------------------------

    # Counters metrics.py reads (per publication or connection, never per message sent).

    @property
    def publications(self) -> int:
        """Publications handed to this worker's hub."""
        return self.hub.publications

    @property
    def connects(self) -> int:
        return self.sessions.connects

    @property
    def disconnects(self) -> dict[int, int]:
        """Server-side disconnect code -> count."""
        return self.sessions.disconnects

    def new_conn(self, v2: bool, connect_request: ConnectRequest | None, headers: Headers = (),
                 resume: str = "") -> Conn:
        return self.sessions.new_conn(v2, connect_request, headers, resume)

    def _drop(self, conn: Conn, reason: Disconnect) -> None:
        self.sessions.disconnect(conn, reason)

    def _close_slow(self) -> None:
        self.sessions.close_slow()

    # -- broker subscriptions (the hub's first and last subscriber of a channel) ------------------

    def _first_subscriber(self, channel: str) -> None:
        if not self._subscribes:
            return
        try:
            waiting = run_eager(self.engine.subscribe(channel))
        except Exception:
            log.exception("subscribing to %.80r failed", channel)
            return
        if waiting is not None:
            self._subscribing[channel] = waiting
            waiting.add_done_callback(lambda done: self._subscribed(channel, done))

    def _subscribed(self, channel: str, done: asyncio.Future) -> None:
        if self._subscribing.get(channel) is done:
            del self._subscribing[channel]
        if not done.cancelled() and done.exception() is not None:
            log.warning("subscribing to %.80r failed: %s", channel, done.exception())

    def _last_subscriber(self, channel: str) -> None:
        if self._subscribes:
            self.engine.unsubscribe(channel)

    async def receiving(self, channels: Iterable[str]) -> None:
        """Wait until the engine delivers these channels' publications here (a broker
        subscription may be under way); raises when it cannot."""
        if self._subscribing:
            for channel in channels:
                waiting = self._subscribing.get(channel)
                if waiting is not None:
                    await asyncio.shield(waiting)

    # -- engine handler (see engine/base.py) ------------------------------------------------------

    def handle_gap(self, channels: list[str]) -> None:
        dropped = self.hub.drop_positioned(channels)
        if dropped:
            log.warning("%d positioned clients of %d channels may have missed publications: "
                        "they reconnect and recover", dropped, len(channels))

    def handle_control(self, op: str, args: dict) -> None:
        """A command another node sent: apply it on every worker of this node."""
        if self.cluster is not None:
            self.cluster.command(op, args)
        self.run_soon(self.apply_command({"op": op, **args}, b""))

    async def handle_survey(self, op: str, args: dict) -> Any:
        if op == "channels":
            return await self._node_channels(args.get("pattern", ""))
        raise ApiError(104)

    def node_info(self) -> dict:
        """This node's entry for the other nodes: over all workers as of the last tick's survey."""
        return self._node_info or self._node_entry([self.stats()])

    async def _refresh_node_info(self) -> None:
        self._node_info = await self._this_node()

    # -- what other workers ask (cluster.py) ----------------------------------------------------

    def reset_clients(self) -> None:
        """This worker may have missed publications (bus overflow): every client reconnects and recovers."""
        self.sessions.reset_all()

    def answer_survey(self, op: str, args: dict) -> Any:
        if op == "channels":
            return self.hub.local_channels(args["pattern"])
        if op == "stats":
            return self.stats()
        raise ApiError(104)

    async def apply_command(self, args: dict, _tail: bytes) -> None:
        """A user-targeted command from another worker or node: apply it to our connections."""
        args = dict(args)
        op = args.pop("op")
        sessions = self.sessions
        try:
            if op == "subscribe":
                await sessions.subscribe_local(**_raw_fields(args, "info", "data"))
            elif op == "unsubscribe":
                sessions.unsubscribe_local(**args)
            elif op == "disconnect":
                code, reason, reconnect = args.pop("reason")
                sessions.disconnect_local(**args, reason=Disconnect(code, reason, reconnect))
            elif op == "refresh":
                sessions.refresh_local(**_raw_fields(args, "info"))
            elif op == "gap":                 # the worker relaying these channels lost some
                self.handle_gap(args["channels"])
            elif op == "hello" and self.cluster is not None and self.cluster.relay is not None:
                self.cluster.relay.worker_restarted(args["worker"])
        except ApiError:
            pass                          # the worker that took the API call reports errors

    def _to_everyone(self, op: str, args: dict) -> None:
        """User-targeted commands act on every worker of every node."""
        if self.cluster is not None:
            self.cluster.command(op, args)
        control = self.engine.publish_control(op, args)
        if not control.done():
            control.add_done_callback(_log_failure)

    # -- server API (06 §4) ------------------------------------------------------------------

    def channel_options(self, channel: str) -> ChannelOptions:
        """Options of a channel named in an API call; 107 for a name the node cannot carry (it
        never reaches the bus), 102 for an unknown namespace."""
        opts = self._options_of.get(channel)
        if opts is not None:
            return opts
        if not channel_name_ok(channel):
            raise ApiError(107)
        opts = self.rules.options(channel)
        if opts is None:
            raise ApiError(102)
        if len(self._options_of) >= _OPTIONS_CACHED:
            self._options_of.clear()
        self._options_of[channel] = opts
        return opts

    def publish_now(self, channel: str, data: bytes, *, skip_history: bool = False,
                    tags: dict[str, str] | None = None) -> asyncio.Future:
        """Start a publish: a future of (offset, epoch), usually done already (see engine/base.py).
        Raises ApiError for a channel no namespace allows."""
        opts = self.channel_options(channel)
        return self.engine.publish(channel, data, opts, skip_history=skip_history, tags=tags)

    async def publish(self, channel: str, data: bytes, *, skip_history: bool = False,
                      tags: dict[str, str] | None = None) -> tuple[int, str]:
        return await self.publish_now(channel, data, skip_history=skip_history, tags=tags)

    async def subscribe(self, user: str, channel: str, *, client: str = "", session: str = "",
                        info: bytes | None = None, data: bytes | None = None, expire_at: int = 0,
                        recover_since: tuple[int, str] | None = None,
                        override: dict[str, bool] | None = None) -> None:
        self.channel_options(channel)
        args = dict(user=user, channel=channel, client=client, session=session, expire_at=expire_at,
                    recover_since=recover_since, override=override or {})
        self._to_everyone("subscribe", {**args, "info": _fragment(info), "data": _fragment(data)})
        await self.sessions.subscribe_local(**args, info=info, data=data)

    async def unsubscribe(self, user: str, channel: str, *, client: str = "", session: str = "") -> None:
        if channel:
            self.channel_options(channel)
        args = dict(user=user, channel=channel, client=client, session=session)
        self._to_everyone("unsubscribe", args)
        self.sessions.unsubscribe_local(**args)

    async def disconnect(self, user: str, *, client: str = "", session: str = "",
                         whitelist: Iterable[str] | None = None, disconnect: Disconnect | None = None) -> None:
        reason = disconnect or FORCE_DISCONNECT
        args = dict(user=user, client=client, session=session, whitelist=list(whitelist or ()))
        self._to_everyone("disconnect", {**args, "reason": [reason.code, reason.reason, reason.reconnect]})
        self.sessions.disconnect_local(**args, reason=reason)

    async def refresh(self, user: str, *, client: str = "", session: str = "", expired: bool = False,
                      expire_at: int = 0, info: bytes | None = None) -> None:
        args = dict(user=user, client=client, session=session, expired=expired, expire_at=expire_at)
        self._to_everyone("refresh", {**args, "info": _fragment(info)})
        self.sessions.refresh_local(**args, info=info)

    async def presence(self, channel: str) -> dict[str, Any]:
        if not self.channel_options(channel).presence:
            raise ApiError(108)
        members = await self.engine.presence(channel)
        return {client: orjson.Fragment(info) for client, info in members.items()}

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        if not self.channel_options(channel).presence:
            raise ApiError(108)
        return await self.engine.presence_stats(channel)

    async def history(self, channel: str, *, limit: int, since: tuple[int, str] | None,
                      reverse: bool) -> tuple[list[dict], int, str]:
        if not self.channel_options(channel).history_enabled:
            raise ApiError(108)
        pubs, top, epoch = await self.engine.history(channel, since=since, limit=limit, reverse=reverse)
        return [_publication_dict(p) for p in pubs], top, epoch

    async def history_remove(self, channel: str) -> None:
        if not self.channel_options(channel).history_enabled:
            raise ApiError(108)
        await self.engine.remove_history(channel)

    async def channels(self, pattern: str) -> dict[str, int]:
        counts = await self._node_channels(pattern)
        for other in await self.engine.survey("channels", {"pattern": pattern}):
            _add_counts(counts, other)
        return counts

    async def _node_channels(self, pattern: str) -> dict[str, int]:
        """Channel -> subscribers over this node's workers."""
        try:
            counts = self.hub.local_channels(pattern)
        except ValueError:
            raise ApiError(100) from None
        if self.cluster is not None:
            for other in await self.cluster.survey("channels", {"pattern": pattern}):
                _add_counts(counts, other)
        return counts

    def stats(self) -> dict:
        """This worker's figures (06 §4.12 node fields, plus engine and bus gauges)."""
        hub = self.hub
        entry = {
            "uid": self.uid, "name": self.name, "version": self.version, "worker": self.index,
            "num_clients": self.sessions.num_clients(),
            "num_users": len(hub.users),
            "num_channels": hub.num_channels(),
            "num_subs": hub.num_subs(),
        }
        uptime = int(time.time() - self.started)
        if uptime:
            entry["uptime"] = uptime
        items = {"uniws.engine.streams": float(self.engine.num_streams()),
                 "uniws.node.publications": float(self.hub.publications),
                 "uniws.node.presence_channels": float(self.engine.num_presence_channels()),
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
        """This node's entry (sums over workers, per-worker figures under `workers`; num_users and
        num_channels count a user or channel once per worker), then every other node's."""
        relay = self.cluster.relay if self.cluster is not None else None
        others = await relay.current_nodes() if relay is not None else self.engine.nodes()
        return [await self._this_node(), *others]

    async def _this_node(self) -> dict:
        workers = [self.stats()]
        if self.cluster is not None:
            workers += await self.cluster.survey("stats", {})
            workers.sort(key=lambda w: w["worker"])
        return self._node_entry(workers)

    @staticmethod
    def _node_entry(workers: list[dict]) -> dict:
        node = {key: value for key, value in workers[0].items() if key != "worker"}
        for key in ("num_clients", "num_users", "num_channels", "num_subs"):
            node[key] = sum(w[key] for w in workers)
        node["metrics"] = {"interval": workers[0]["metrics"]["interval"], "items": {
            key: sum(w["metrics"]["items"].get(key, 0.0) for w in workers)
            for key in workers[0]["metrics"]["items"]}}
        if len(workers) > 1:
            node["workers"] = workers
        return node

    # -- shutdown ----------------------------------------------------------------------------

    async def shutdown(self, timeout: float) -> bool:
        """Disconnect every client with 3001 and wait for them to go; False on timeout."""
        self.shutting_down = True
        if self._timer is not None:
            self._timer.cancel()
        self.sessions.close_all(SHUTDOWN)
        deadline = time.monotonic() + timeout
        while self.conns and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await self.engine.close()
        if self.proxy is not None:
            await self.proxy.client.close()
        return not self.conns


def _log_failure(done: asyncio.Future) -> None:
    if not done.cancelled() and done.exception() is not None:
        exc = done.exception()
        if isinstance(exc, ApiError):
            log.warning("background work failed: error %d %s", exc.code, exc.message)
        else:
            log.error("background work failed", exc_info=exc)


def _add_counts(counts: dict[str, int], other: dict[str, int]) -> None:
    for channel, n in other.items():
        counts[channel] = counts.get(channel, 0) + n


def _publication_dict(pub: Publication) -> dict:
    item: dict = {"data": orjson.Fragment(pub.data)}
    if pub.offset:
        item["offset"] = pub.offset
    if pub.tags:
        item["tags"] = pub.tags
    return item


def _fragment(raw: bytes | None):
    """Raw JSON carried inside a bus or control command (decoded back by `_raw_fields`)."""
    return orjson.Fragment(raw) if raw is not None else None


def _raw_fields(args: dict, *names: str) -> dict:
    for name in names:
        if args.get(name) is not None:
            args[name] = orjson.dumps(args[name])
    if args.get("recover_since") is not None:
        args["recover_since"] = tuple(args["recover_since"])
    return args
