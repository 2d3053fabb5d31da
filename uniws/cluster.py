"""One node out of several worker processes: channel ownership and node-wide operations over the bus.

Each channel stream has one authority, its owner worker (a stable hash of the
name). The owner assigns offsets, keeps history and broadcasts every
publication of the channel to all workers, so every worker sees a channel's
publications in the same order. Other workers reach the owner with requests;
a publish to a channel without history has no position to answer with, so it
is posted instead (no answer of its own), and one barrier request per owner and
loop turn tells the publishing worker when the owner has served all of them.
Presence, `channels` and `info` are answered by surveying every worker (the
connections are where the truth is), and user-targeted commands (subscribe,
unsubscribe, disconnect, refresh) are broadcast and applied by every worker.

Wire format of bus messages (each a bytes object, one kind byte first):
  P  publication   <QHHIHI> offset, len(channel), len(epoch), len(tags), requester + 1 (0: none),
                   request id + channel + epoch + tags + data; it is also the answer to the
                   requester's publish request, so a forwarded publish costs two messages, not three
  R  request       <II>   request id, len(json) + json + raw tail; id 0 is a post, never answered
  A  answer        <IBI>  request id, status (0 ok, else the API error code), len(json) + json + raw tail
  C  command       <I>    len(json) + json + raw tail
"""

from __future__ import annotations

import asyncio
import collections
import logging
import struct
import time
import zlib
from typing import Any, Callable

import orjson

from .engine.base import Publication
from .engine.memory import MemoryEngine
from .errors import ApiError

log = logging.getLogger("uniws.cluster")

_PUB = struct.Struct("<QHHIHI")
_REQ = struct.Struct("<II")
_ANS = struct.Struct("<IBI")
_CMD = struct.Struct("<I")
_PUB_ITEM = struct.Struct("<QII")
REQUEST_TIMEOUT = 5.0
_BARRIER = orjson.dumps({"op": "barrier"})


def owner_of(channel: str, count: int) -> int:
    """The worker that owns a channel's stream: stable across processes and restarts."""
    return zlib.crc32(channel.encode("utf-8", "surrogatepass")) % count


# -- encoding --------------------------------------------------------------------------------

def _tags_bytes(tags: dict[str, str] | None) -> bytes:
    return orjson.dumps(tags) if tags else b""


def encode_pub(channel: str, epoch: str, pub: Publication, requester: int = -1, request_id: int = 0) -> bytes:
    ch, ep, tags = channel.encode(), epoch.encode(), _tags_bytes(pub.tags)
    head = _PUB.pack(pub.offset, len(ch), len(ep), len(tags), requester + 1, request_id)
    return b"P" + head + ch + ep + tags + pub.data


def pub_channel(message: bytes) -> tuple[str, int, int]:
    """(channel, requester, request id) of a P message, without decoding the rest."""
    _, n_ch, _, _, requester, request_id = _PUB.unpack_from(message, 1)
    start = 1 + _PUB.size
    return message[start:start + n_ch].decode(), requester - 1, request_id


def decode_pub(message: bytes) -> tuple[str, str, Publication]:
    offset, n_ch, n_ep, n_tags, _, _ = _PUB.unpack_from(message, 1)
    pos = 1 + _PUB.size
    channel = message[pos:pos + n_ch].decode()
    pos += n_ch
    epoch = message[pos:pos + n_ep].decode()
    pos += n_ep
    tags = orjson.loads(message[pos:pos + n_tags]) if n_tags else None
    return channel, epoch, Publication(message[pos + n_tags:], offset, tags)


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


def _split(message: bytes, head: struct.Struct) -> tuple[tuple, Any, bytes]:
    fields = head.unpack_from(message, 1)
    start = 1 + head.size
    end = start + fields[-1]
    return fields, orjson.loads(message[start:end]), message[end:]


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
    """The bus side of one worker: owner routing, requests, surveys and commands."""

    def __init__(self, node, index: int, count: int, local: MemoryEngine) -> None:
        self.node = node
        self.index = index
        self.count = count
        self.local = local
        self.bus = None                        # set by attach(); a Bus
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future] = {}
        self._timeouts: collections.deque[tuple[float, int]] = collections.deque()   # FIFO: one timeout
        self.overflows = 0
        self._publishing_for = (-1, 0)        # (worker, request id) of the publish being served
        self._barriers: dict[int, asyncio.Future] = {}    # worker -> done when this turn's posts are served

    def attach(self, bus) -> None:
        self.bus = bus
        bus.before_flush = self._send_barriers

    def owner(self, channel: str) -> int:
        return owner_of(channel, self.count)

    # -- the owner's broadcast -----------------------------------------------------------

    def handle_publication(self, channel: str, pub: Publication, epoch: str) -> None:
        """MemoryEngine callback on the owner: deliver here and send to every other worker."""
        self.node.handle_publication(channel, pub, epoch)
        requester, request_id = self._publishing_for
        self.bus.broadcast(encode_pub(channel, epoch, pub, requester, request_id))

    # -- requests to one worker --------------------------------------------------------------

    def send_request(self, worker: int, op: str, args: dict, tail: bytes = b"") -> asyncio.Future:
        """Send a request now (so it keeps its place in bus order); the future of (result, tail)."""
        request_id = self._new_id()
        future = self.node.loop.create_future()
        self._waiting[request_id] = future
        body = orjson.dumps({"op": op, **args})
        self.bus.send(worker, b"R" + _REQ.pack(request_id, len(body)) + body + tail)
        self._timeouts.append((time.monotonic() + REQUEST_TIMEOUT, request_id))
        return future

    async def request(self, worker: int, op: str, args: dict, tail: bytes = b"") -> tuple[Any, bytes]:
        return await self.send_request(worker, op, args, tail)

    def post(self, worker: int, op: str, args: dict, tail: bytes = b"") -> asyncio.Future:
        """Send a request that gets no answer of its own. The returned future is shared by
        everything posted to `worker` in this loop turn: one barrier request follows them
        (the bus keeps order), and its answer means the worker has served them all."""
        body = orjson.dumps({"op": op, **args})
        self.bus.send(worker, b"R" + _REQ.pack(0, len(body)) + body + tail)
        barrier = self._barriers.get(worker)
        if barrier is None:
            barrier = self._barriers[worker] = self.node.loop.create_future()
        return barrier

    def _send_barriers(self) -> None:
        """Bus flush hook: close this turn's posts to each worker with one barrier request."""
        if not self._barriers:
            return
        barriers, self._barriers = self._barriers, {}
        deadline = time.monotonic() + REQUEST_TIMEOUT
        for worker, future in barriers.items():
            request_id = self._new_id()
            self._waiting[request_id] = future
            self._timeouts.append((deadline, request_id))
            self.bus.send(worker, b"R" + _REQ.pack(request_id, len(_BARRIER)) + _BARRIER)

    def _new_id(self) -> int:
        self._next_id = self._next_id % 0xFFFFFFFF + 1     # 1..2**32-1: 0 marks a post
        return self._next_id

    def expire_requests(self, now: float) -> None:
        """Fail requests unanswered for REQUEST_TIMEOUT (the node's tick calls this; no timer each)."""
        timeouts = self._timeouts
        while timeouts and timeouts[0][0] <= now:
            _, request_id = timeouts.popleft()
            future = self._waiting.pop(request_id, None)
            if future is not None and not future.done():
                log.warning("a worker did not answer request %d within %.0f s", request_id, REQUEST_TIMEOUT)
                future.set_exception(ApiError(100))

    async def survey(self, op: str, args: dict) -> list[Any]:
        """Ask every other worker; their answers in worker order."""
        answers = await asyncio.gather(*(self.request(w, op, args) for w in range(self.count) if w != self.index))
        return [result for result, _tail in answers]

    def command(self, op: str, args: dict, tail: bytes = b"") -> None:
        body = orjson.dumps({"op": op, **args})
        self.bus.broadcast(b"C" + _CMD.pack(len(body)) + body + tail)

    # -- bus handler -----------------------------------------------------------------------

    def on_bus_message(self, sender: int, message: bytes) -> None:
        kind = message[0]
        if kind == 0x50:                      # P
            channel, requester, request_id = pub_channel(message)
            interested, mine = self.node.interested(channel), requester == self.index
            if interested or mine:
                _, epoch, pub = decode_pub(message)
                if interested:
                    self.node.handle_publication(channel, pub, epoch)
                if mine:
                    self._resolve(request_id, 0, [pub.offset, epoch], b"")
        elif kind == 0x52:                    # R
            (request_id, _), args, tail = _split(message, _REQ)
            self._answer(sender, request_id, args, tail)
        elif kind == 0x41:                    # A
            (request_id, status, _), result, tail = _split(message, _ANS)
            self._resolve(request_id, status, result, tail)
        elif kind == 0x43:                    # C
            _, args, tail = _split(message, _CMD)
            task = self.node.loop.create_task(self.node.apply_command(args, tail))
            self.node.track(task)

    def _resolve(self, request_id: int, status: int, result: Any, tail: bytes) -> None:
        future = self._waiting.pop(request_id, None)
        if future is not None and not future.done():
            if status:
                future.set_exception(ApiError(status))
            else:
                future.set_result((result, tail))

    def on_bus_gap(self, sender: int) -> None:
        """We fell a whole ring behind `sender`: our clients may have missed publications."""
        self.overflows += 1
        log.error("bus messages from worker %d were lost: reconnecting this worker's clients", sender)
        self.node.reset_clients()

    def _answer(self, sender: int, request_id: int, args: dict, tail: bytes) -> None:
        """Serve a request at once, in bus order: what a worker serves is its own memory."""
        if request_id == 0:                   # a post: served, never answered
            try:
                run_now(self._serve(args, tail))
            except Exception:
                log.exception("posted %s from worker %d failed", args.get("op"), sender)
            return
        status, result, out_tail = 0, None, b""
        try:
            if args["op"] == "publish":
                # The publication broadcast carries the answer (see the P message).
                self._publishing_for = (sender, request_id)
                try:
                    run_now(self._serve(args, tail))
                    return
                finally:
                    self._publishing_for = (-1, 0)
            result, out_tail = run_now(self._serve(args, tail))
        except ApiError as exc:
            status = exc.code
        except Exception:
            log.exception("request %s from worker %d failed", args.get("op"), sender)
            status = 100
        body = orjson.dumps(result)
        self.bus.send(sender, b"A" + _ANS.pack(request_id, status, len(body)) + body + out_tail)

    async def _serve(self, args: dict, tail: bytes) -> tuple[Any, bytes]:
        op = args["op"]
        handler: Callable | None = getattr(self, "_op_" + op, None)
        if handler is None:
            raise ApiError(104)
        return await handler(args, tail)

    # -- what an owner serves ------------------------------------------------------------------

    async def _op_publish(self, args: dict, data: bytes) -> tuple[Any, bytes]:
        opts = self.node.rules.options(args["channel"])
        if opts is None:
            raise ApiError(102)
        offset, epoch = self.local.publish(args["channel"], data, opts, skip_history=args["skip_history"],
                                           tags=args.get("tags"))
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
        return self.node.local_presence(args["channel"]), b""

    async def _op_channels(self, args: dict, _tail: bytes) -> tuple[Any, bytes]:
        return self.node.local_channels(args["pattern"]), b""

    async def _op_stats(self, args: dict, _tail: bytes) -> tuple[Any, bytes]:
        return self.node.stats(), b""


async def _position(answer: asyncio.Future) -> tuple[int, str]:
    (offset, epoch), _ = await answer
    return offset, epoch


class ShardedEngine:
    """The engine interface over channel owners: local calls for owned channels, requests otherwise."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.local = cluster.local

    def _remote(self, channel: str) -> int | None:
        owner = self.cluster.owner(channel)
        return None if owner == self.cluster.index else owner

    def publish(self, channel, data, opts, *, skip_history=False, tags=None):
        """(offset, epoch) for a channel owned here; a Future done when the owner has served a
        post (its result is not the position); else a coroutine of (offset, epoch). Whatever
        goes to the owner is sent before this returns, so calls reach it in call order."""
        owner = self._remote(channel)
        if owner is None:
            return self.local.publish(channel, data, opts, skip_history=skip_history, tags=tags)
        args = {"channel": channel, "skip_history": skip_history, "tags": tags}
        if skip_history or not opts.history_enabled:
            # No position to answer with: post it, and wait only for the turn's barrier, so a
            # batch to history-less channels costs one answer per owner instead of one each.
            return self.cluster.post(owner, "publish", args, data)
        return _position(self.cluster.send_request(owner, "publish", args, data))

    async def stream_top(self, channel):
        owner = self._remote(channel)
        if owner is None:
            return await self.local.stream_top(channel)
        (offset, epoch), _ = await self.cluster.request(owner, "stream_top", {"channel": channel})
        return offset, epoch

    async def history(self, channel, *, since, limit, reverse):
        owner = self._remote(channel)
        if owner is None:
            return await self.local.history(channel, since=since, limit=limit, reverse=reverse)
        (top, epoch), tail = await self.cluster.request(
            owner, "history", {"channel": channel, "since": since, "limit": limit, "reverse": reverse})
        return decode_pubs(tail), top, epoch

    async def remove_history(self, channel):
        owner = self._remote(channel)
        if owner is None:
            return await self.local.remove_history(channel)
        await self.cluster.request(owner, "remove_history", {"channel": channel})

    def sweep(self) -> None:
        self.local.sweep()

    def num_streams(self) -> int:
        return self.local.num_streams()
