"""One node out of several worker processes: channel ownership and node-wide operations over the bus.

Each channel stream has one authority, its owner worker (a stable hash of the
name). The owner assigns offsets, keeps history and broadcasts every
publication of the channel to all workers, so every worker sees a channel's
publications in the same order. Other workers reach the owner with requests
(`rpc.py`: ids, answers, timeouts); a publish to a channel without history has
no position to answer with, so it is posted instead, and the turn's barrier to
the owner confirms it (or the owner's error fails it). Presence, `channels` and
`info` are answered by surveying every worker (the connections are where the
truth is), and user-targeted commands (subscribe, unsubscribe, disconnect,
refresh) are broadcast and applied by every worker. This module only routes.

A publication is atomic: the owner checks that its broadcast fits the bus before
it assigns an offset, stores it or delivers it anywhere.

Wire format of the bus messages routed here (each a bytes object, one kind byte first;
requests, posts and answers: see rpc.py):
  P  publication   <QHHIHI> offset, len(channel), len(epoch), len(tags), requester + 1 (0: none),
                   request id + channel + epoch + tags + data; it is also the answer to the
                   requester's publish request, so a forwarded publish costs two messages, not three
  J  join/leave    <BH>   1 join / 0 leave, len(channel) + channel + ClientInfo JSON
  C  command       <I>    len(json) + json + raw tail
"""

from __future__ import annotations

import asyncio
import functools
import logging
import struct
import zlib
from typing import Any, Callable, Container, Protocol

import orjson

from ._shmring import MessageTooLarge
from .channels import ChannelOptions
from .engine.base import NO_POSITION, Publication
from .engine.memory import MemoryEngine
from .errors import ApiError
from .rpc import ANSWER, ANSWERED, FAILED, POST, REQUEST, Rpc, split

log = logging.getLogger("uniws.cluster")

_PUB = struct.Struct("<QHHIHI")
_PUB_UNPACK = _PUB.unpack_from
_PUB_PACK = _PUB.pack
_FWD = struct.Struct("<IIHI")        # U: barrier id, index (as every post), len(channel), len(tags)
_FWD_PACK = struct.Struct("<HI").pack
_FWD_UNPACK = _FWD.unpack_from
_FWD_START = 1 + _FWD.size
_PUB_START = 1 + _PUB.size
_CMD = struct.Struct("<I")
_PUB_ITEM = struct.Struct("<QII")
_JOIN_LEAVE = struct.Struct("<BH")
_EPOCH_ROOM = 16                      # bytes kept for the epoch when sizing a broadcast


class Worker(Protocol):
    """What the cluster needs of its worker's node."""

    loop: asyncio.AbstractEventLoop

    wanted: Container[str]             # channels someone on this worker receives (the hub's count)

    def handle_publication(self, channel: str, pub: Publication, epoch: str) -> None: ...

    def handle_join_leave(self, channel: str, join: bool, info: bytes) -> None: ...

    def channel_options(self, channel: str): ...          # raises ApiError

    def answer_survey(self, op: str, args: dict) -> Any: ...

    async def apply_command(self, args: dict, tail: bytes) -> None: ...

    def reset_clients(self) -> None: ...

    def run_soon(self, coro: Any) -> None: ...


def owner_of(channel: str, count: int) -> int:
    """The worker that owns a channel's stream: stable across processes and restarts."""
    return zlib.crc32(channel.encode("utf-8", "surrogatepass")) % count


# -- encoding --------------------------------------------------------------------------------

def _tags_bytes(tags: dict[str, str] | None) -> bytes:
    return orjson.dumps(tags) if tags else b""


def encode_pub(channel: str, epoch: str, pub: Publication, requester: int = -1, request_id: int = 0) -> bytes:
    return pub_message(channel, pub.data, pub.tags, pub.offset, epoch, requester, request_id)


def pub_message(channel: str, data: bytes, tags: dict[str, str] | None, offset: int = 0, epoch: str = "",
                requester: int = -1, request_id: int = 0) -> bytes:
    """A P message: what every worker decodes in `Cluster.on_bus_message`."""
    ch, ep, tags_json = channel.encode(), epoch.encode(), _tags_bytes(tags)
    head = _PUB_PACK(offset, len(ch), len(ep), len(tags_json), requester + 1, request_id)
    return b"".join((b"P", head, ch, ep, tags_json, data))


def encode_pubs(pubs: list[Publication]) -> bytes:
    parts = []
    for pub in pubs:
        tags = _tags_bytes(pub.tags)
        parts.append(_PUB_ITEM.pack(pub.offset, len(tags), len(pub.data)) + tags + pub.data)
    return b"".join(parts)


def decode_pubs(blob: bytes) -> list[Publication]:
    pubs, pos = [], 0
    while pos < len(blob):
        offset, n_tags, n_data = _PUB_ITEM.unpack_from(blob, pos)
        pos += _PUB_ITEM.size
        tags = orjson.loads(blob[pos:pos + n_tags]) if n_tags else None
        pos += n_tags
        pubs.append(Publication(blob[pos:pos + n_data], offset, tags))
        pos += n_data
    return pubs


def run_now(coro):
    """The result of a coroutine that never suspends (work on this worker's own memory),
    without the cost of a task. One that does suspend is a bug, reported as such."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("a bus request handler suspended")


class Cluster:
    """The bus side of one worker: owner routing, surveys and commands."""

    def __init__(self, node: Worker, index: int, count: int, local: MemoryEngine | None) -> None:
        self.node = node
        self.index = index
        self.count = count
        self.local = local
        self.bus = None                        # set by attach(); a Bus
        self.max_message = 0                   # the longest message the bus carries (attach)
        self.rpc = Rpc(node.loop, self._serve, posted=NO_POSITION)
        self.overflows = 0
        self.sequenced = 0                     # publications this worker owned and broadcast (metrics)
        self._publishing_for = (-1, 0)        # (worker, request id) of the publish being served
        self.relay = None                      # engine/relay.py's BrokerRelay, with a broker engine
        # The hot path's shortcuts to the node: channels wanted here, and delivery (the hub's).
        self.wanted = node.wanted
        self.deliver = node.handle_publication

    def attach(self, bus) -> None:
        self.bus = bus
        self.max_message = bus.max_message
        self.rpc.attach(bus)

    def owner(self, channel: str) -> int:
        return owner_of(channel, self.count)

    def expire_requests(self, now: float) -> None:
        """Fail requests unanswered within the timeout (the node's tick calls this; no timer each)."""
        self.rpc.expire(now)

    # -- the owner's publish and broadcast ---------------------------------------------------

    def publish_local(self, channel: str, data: bytes, opts, tags: dict[str, str] | None) -> tuple[int, str]:
        """Publish into a stream owned here: refused (error 100, nothing done) when its broadcast
        would not fit the bus, so no worker delivers what another cannot."""
        self._check_size(channel, data, tags)
        return self.local.publish_now(channel, data, opts, tags=tags)

    def publish_unstored(self, channel: str, data: bytes, tags: dict[str, str] | None) -> asyncio.Future | None:
        """A publication kept in no history (a channel without it, or skip_history): its owner
        still sends it to every worker, so every subscriber sees a channel's publications in one
        order. Owned here: sent and delivered now (None). Otherwise a U message, posted to the
        owner: the future is done when the owner has served it (the turn's barrier) or fails
        with the owner's refusal. Refused (error 100, nothing sent) when it would not fit the bus."""
        self._check_size(channel, data, tags)
        owner = owner_of(channel, self.count)
        if owner == self.index:
            self._send_unstored(channel, data, tags)
            return None
        ch, tags_json = channel.encode(), _tags_bytes(tags)
        return self.rpc.post_message(owner, b"U", b"".join((_FWD_PACK(len(ch), len(tags_json)), ch, tags_json, data)))

    def _send_unstored(self, channel: str, data: bytes, tags: dict[str, str] | None) -> None:
        """The owner's broadcast of an unstored publication, and its delivery here."""
        self.sequenced += 1
        self.bus.broadcast(pub_message(channel, data, tags))
        if channel in self.wanted:            # a subscriber here (most channels have one, on one worker)
            self.deliver(channel, Publication(data, 0, tags or None), "")

    def _serve_unstored(self, sender: int, message: bytes) -> None:
        """A U message: publish for the worker that took the call, unless this owner's rules
        refuse the channel (a reload racing it), which is that command's error alone."""
        barrier_id, index, n_ch, n_tags = _FWD_UNPACK(message, 1)
        pos = _FWD_START + n_ch
        try:
            channel = message[_FWD_START:pos].decode()
            tags = orjson.loads(message[pos:pos + n_tags]) if n_tags else None
            self.node.channel_options(channel)
            self._send_unstored(channel, message[pos + n_tags:], tags)
        except ApiError as exc:
            self.rpc.failed(sender, barrier_id, index, exc.code)
        except Exception:
            log.exception("publication from worker %d failed", sender)
            self.rpc.failed(sender, barrier_id, index, 100)

    def _check_size(self, channel: str, data: bytes, tags: dict[str, str] | None) -> None:
        size = 1 + _PUB.size + 4 * len(channel) + _EPOCH_ROOM + len(data)    # a bound: no encoding
        if tags or size > self.max_message:
            size += len(_tags_bytes(tags)) + len(channel.encode()) - 4 * len(channel)
            if size > self.max_message:
                log.warning("publication to %.80r refused: %d bytes are over the bus limit of %d bytes",
                            channel, size, self.max_message)
                raise ApiError(100)

    def handle_publication(self, channel: str, pub: Publication, epoch: str) -> None:
        """MemoryEngine callback on the owner: send to every other worker and deliver here."""
        requester, request_id = self._publishing_for
        self.sequenced += 1
        self.bus.broadcast(encode_pub(channel, epoch, pub, requester, request_id))
        self.node.handle_publication(channel, pub, epoch)

    def handle_join_leave(self, channel: str, join: bool, info: bytes) -> None:
        """Join or leave from here: every worker delivers it to its subscribers (none is
        refused for size: the channel and info were accepted into the bus's limits at connect)."""
        ch = channel.encode("utf-8", "surrogatepass")
        try:
            self.bus.broadcast(b"J" + _JOIN_LEAVE.pack(join, len(ch)) + ch + info)
        except MessageTooLarge as exc:
            log.warning("join/leave of %.80r not sent to the other workers: %s", channel, exc)
        self.node.handle_join_leave(channel, join, info)

    # -- requests to other workers -------------------------------------------------------------

    def request(self, worker: int, op: str, args: dict, tail: bytes = b"", shape=None) -> asyncio.Future:
        return self.rpc.request(worker, op, args, tail, shape)

    async def survey(self, op: str, args: dict) -> list[Any]:
        """Ask every other worker; their answers in worker order."""
        answers = await asyncio.gather(*(self.request(w, op, args) for w in range(self.count) if w != self.index))
        return [result for result, _tail in answers]

    def command(self, op: str, args: dict, tail: bytes = b"") -> None:
        """Broadcast a command every other worker applies; error 100, nothing sent, when it
        does not fit the bus."""
        body = orjson.dumps({"op": op, **args})
        try:
            self.bus.broadcast(b"C" + _CMD.pack(len(body)) + body + tail)
        except MessageTooLarge as exc:
            log.warning("%s not sent to the other workers: %s", op, exc)
            raise ApiError(100) from None

    # -- bus handler -----------------------------------------------------------------------

    def on_bus_message(self, sender: int, message: bytes) -> None:
        kind = message[0]
        if kind == 0x50:                      # P: one header read; nothing built for a channel not here
            offset, n_ch, n_ep, n_tags, requester, request_id = _PUB_UNPACK(message, 1)
            pos = _PUB_START + n_ch
            channel = message[_PUB_START:pos].decode()
            interested, mine = channel in self.wanted, requester == self.index + 1
            if interested or mine:
                epoch = message[pos:pos + n_ep].decode() if n_ep else ""
                pos += n_ep
                tags = orjson.loads(message[pos:pos + n_tags]) if n_tags else None
                pub = Publication(message[pos + n_tags:], offset, tags)
                if interested:
                    self.deliver(channel, pub, epoch)
                if mine:
                    self.rpc.resolve(request_id, [offset, epoch])
        elif kind == 0x55:                    # U: an unstored publication to a channel owned here
            self._serve_unstored(sender, message)
        elif kind == REQUEST or kind == POST:
            self.rpc.on_request(sender, message)
        elif kind == ANSWER or kind == FAILED:
            self.rpc.on_answer(message)
        elif kind == 0x4A:                    # J
            join, n_ch = _JOIN_LEAVE.unpack_from(message, 1)
            start = 1 + _JOIN_LEAVE.size
            channel = message[start:start + n_ch].decode("utf-8", "surrogatepass")
            if channel in self.wanted:
                self.node.handle_join_leave(channel, bool(join), message[start + n_ch:])
        elif kind == 0x43:                    # C
            _, args, tail = split(message, _CMD)
            self.node.run_soon(self.node.apply_command(args, tail))

    def on_bus_gap(self, sender: int) -> None:
        """We fell a whole ring behind `sender`: our clients may have missed publications."""
        self.overflows += 1
        log.error("bus messages from worker %d were lost: reconnecting this worker's clients", sender)
        self.node.reset_clients()

    def _serve(self, sender: int, request_id: int, args: dict, tail: bytes) -> Any:
        """Serve a request (or a post: request id 0) at once, in bus order: what a worker
        serves is its own memory."""
        op = args["op"]
        handler: Callable | None = getattr(self, "_op_" + op, None)
        if handler is None:
            raise ApiError(104)
        if op == "publish" and request_id:
            # The publication broadcast carries the answer (see the P message).
            self._publishing_for = (sender, request_id)
            try:
                run_now(handler(args, tail))
            finally:
                self._publishing_for = (-1, 0)
            return ANSWERED
        if op in _SERVED_LATER:
            return asyncio.ensure_future(handler(args, tail))
        return run_now(handler(args, tail))

    # -- what a broker relay serves (engine/relay.py): may wait on the broker -----------------

    async def _op_want(self, args: dict, _tail: bytes) -> tuple[Any, bytes]:
        await self.relay.want(args["worker"], args["channel"])
        return None, b""

    async def _op_unwant(self, args: dict, _tail: bytes) -> tuple[Any, bytes]:
        self.relay.unwant(args["worker"], args["channel"])
        return None, b""

    async def _op_node_survey(self, args: dict, _tail: bytes) -> tuple[Any, bytes]:
        return await self.relay.broker.survey(args["survey"], args["args"]), b""

    async def _op_nodes(self, args: dict, _tail: bytes) -> tuple[Any, bytes]:
        return self.relay.broker.nodes(), b""

    # -- what an owner serves ------------------------------------------------------------------

    async def _op_publish(self, args: dict, data: bytes) -> tuple[Any, bytes]:
        self.node.channel_options(args["channel"])           # refused here too (error 102)
        opts = _stream_options(*args["history"])
        offset, epoch = self.publish_local(args["channel"], data, opts, args.get("tags"))
        return [offset, epoch], b""

    async def _op_stream_top(self, args: dict, _tail: bytes) -> tuple[Any, bytes]:
        return list(await self.local.stream_top(args["channel"])), b""

    async def _op_history(self, args: dict, _tail: bytes) -> tuple[Any, bytes]:
        since = tuple(args["since"]) if args["since"] is not None else None
        pubs, top, epoch = await self.local.history(args["channel"], since=since, limit=args["limit"],
                                                    reverse=args["reverse"])
        return [top, epoch], encode_pubs(pubs)

    async def _op_remove_history(self, args: dict, _tail: bytes) -> tuple[Any, bytes]:
        await self.local.remove_history(args["channel"])
        return None, b""

    async def _op_barrier(self, args: dict, _tail: bytes) -> tuple[Any, bytes]:
        return None, b""

    # -- what every worker serves for surveys ----------------------------------------------------

    async def _op_presence(self, args: dict, _tail: bytes) -> tuple[Any, bytes]:
        members = await self.local.presence(args["channel"])       # this worker's connections
        return {client: orjson.Fragment(info) for client, info in members.items()}, b""

    async def _op_channels(self, args: dict, _tail: bytes) -> tuple[Any, bytes]:
        return self.node.answer_survey("channels", args), b""

    async def _op_stats(self, args: dict, _tail: bytes) -> tuple[Any, bytes]:
        return self.node.answer_survey("stats", args), b""

    async def _op_metrics(self, args: dict, _tail: bytes) -> tuple[Any, bytes]:
        return self.node.metrics.snapshot(), b""


@functools.lru_cache(maxsize=64)
def _stream_options(history_size: int, history_ttl: float) -> ChannelOptions:
    """The options a forwarded publish carries (few distinct ones: cached, not built per call)."""
    return ChannelOptions(history_size=history_size, history_ttl=history_ttl)


_SERVED_LATER = frozenset({"want", "node_survey"})     # ops whose answer may wait on a broker
