"""In-process engine of one worker: channel streams (epoch, offsets, bounded history) and presence.

Spec 05 §7 and 08 §8.2. Everything happens at once: futures are returned done and
coroutines never suspend, which is what makes "read the stream top, then register in
the hub" atomic inside one worker. Time comes from `clock` so expiry is testable;
expired history and stream metadata are reclaimed by `sweep`, which the node calls
once a second. There are no other nodes: control goes nowhere and surveys find no one.
"""

from __future__ import annotations

import asyncio
import random
import string
import time
from collections import deque
from collections.abc import Callable

import orjson

from ..channels import ChannelOptions
from ..errors import ApiError
from .base import NO_POSITION, EngineHandler, OneNode, Publication, done_future, failed_future

_EPOCH_LETTERS = string.ascii_letters


def new_epoch() -> str:
    """Memory engine epochs: 4 random letters (05 §7)."""
    return "".join(random.choices(_EPOCH_LETTERS, k=4))


class Stream:
    __slots__ = ("epoch", "expire_at", "pubs", "remove_at", "top")

    def __init__(self) -> None:
        self.epoch = new_epoch()
        self.top = 0
        self.pubs: deque[Publication] = deque()
        self.expire_at = 0.0      # history_ttl: retained publications dropped after this
        self.remove_at = 0.0      # history_meta_ttl: the whole stream dropped after this


class MemoryEngine(OneNode):
    def __init__(self, handler: EngineHandler | None, loop: asyncio.AbstractEventLoop, *,
                 history_meta_ttl: float = 0.0, clock: Callable[[], float] = time.time) -> None:
        self._handler = handler
        self._loop = loop
        self._meta_ttl = history_meta_ttl
        self._clock = clock
        self._streams: dict[str, Stream] = {}
        self._presence: dict[str, dict[str, bytes]] = {}     # channel -> client id -> ClientInfo JSON
        # Publications without history all answer this: one done future, shared (never altered).
        self._no_position = done_future(loop, NO_POSITION)


    def set_handler(self, handler: EngineHandler) -> None:
        self._handler = handler

    # -- streams ---------------------------------------------------------------------------

    def _stream(self, channel: str) -> Stream:
        stream = self._streams.get(channel)
        if stream is None:
            stream = self._streams[channel] = Stream()
        if self._meta_ttl:
            stream.remove_at = self._clock() + self._meta_ttl
        return stream

    def publish(self, channel: str, data: bytes, opts: ChannelOptions, *,
                skip_history: bool = False, tags: dict[str, str] | None = None) -> asyncio.Future:
        try:
            position = self.publish_now(channel, data, opts, skip_history=skip_history, tags=tags)
        except ApiError as exc:
            return failed_future(self._loop, exc)
        return self._no_position if position is NO_POSITION else done_future(self._loop, position)

    def publish_now(self, channel: str, data: bytes, opts: ChannelOptions, *,
                    skip_history: bool = False, tags: dict[str, str] | None = None) -> tuple[int, str]:
        """`publish` without the future, for the sharded engine's owner (raises ApiError)."""
        pub = Publication(data, 0, tags or None)
        epoch = ""
        if opts.history_enabled and not skip_history:
            stream = self._stream(channel)
            stream.top += 1
            pub.offset = stream.top
            stream.pubs.append(pub)
            while len(stream.pubs) > opts.history_size:
                stream.pubs.popleft()
            stream.expire_at = self._clock() + opts.history_ttl
            epoch = stream.epoch
        self._handler.handle_publication(channel, pub, epoch)
        return (pub.offset, epoch) if epoch else NO_POSITION

    def publish_join_leave(self, channel: str, join: bool, info: bytes) -> None:
        self._handler.handle_join_leave(channel, join, info)

    async def subscribe(self, channel: str) -> None:
        pass                            # publications are delivered in-process anyway

    def unsubscribe(self, channel: str) -> None:
        pass

    async def stream_top(self, channel: str) -> tuple[int, str]:
        stream = self._stream(channel)
        return stream.top, stream.epoch

    async def history(self, channel: str, *, since: tuple[int, str] | None, limit: int,
                      reverse: bool) -> tuple[list[Publication], int, str]:
        stream = self._stream(channel)
        self._expire_history(stream, self._clock())
        if since is not None and since[1] and since[1] != stream.epoch:
            raise ApiError(112)
        if limit == 0:
            return [], stream.top, stream.epoch
        pubs = list(stream.pubs)
        if since is None:
            selected = pubs[::-1] if reverse else pubs
        elif reverse:
            if since[0] == 0:
                raise ApiError(100)            # the reference's quirk (06 §4.9)
            selected = [p for p in reversed(pubs) if p.offset < since[0]]
        else:
            selected = [p for p in pubs if p.offset > since[0]]
        if limit > 0:
            selected = selected[:limit]
        return selected, stream.top, stream.epoch

    async def remove_history(self, channel: str) -> None:
        stream = self._streams.get(channel)
        if stream is not None:
            stream.pubs.clear()

    # -- presence (this worker's connections) -----------------------------------------------

    async def add_presence(self, channel: str, client: str, info: bytes) -> None:
        self._presence.setdefault(channel, {})[client] = info

    async def remove_presence(self, channel: str, client: str) -> None:
        members = self._presence.get(channel)
        if members is not None:
            members.pop(client, None)
            if not members:
                del self._presence[channel]

    async def presence(self, channel: str) -> dict[str, bytes]:
        return dict(self._presence.get(channel, ()))

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        return presence_counts(await self.presence(channel))

    def num_presence_channels(self) -> int:
        return len(self._presence)

    @staticmethod
    def _expire_history(stream: Stream, now: float) -> None:
        if stream.pubs and stream.expire_at and now >= stream.expire_at:
            stream.pubs.clear()

    def sweep(self) -> None:
        """Drop expired history (keeping top and epoch) and expired stream metadata."""
        now = self._clock()
        dead = []
        for channel, stream in self._streams.items():
            self._expire_history(stream, now)
            if stream.remove_at and now >= stream.remove_at:
                dead.append(channel)
        for channel in dead:
            del self._streams[channel]

    def num_streams(self) -> int:
        return len(self._streams)


def presence_counts(members: dict[str, bytes]) -> tuple[int, int]:
    """(clients, distinct users) of a presence map."""
    users = {orjson.loads(info).get("user", "") for info in members.values()}
    return len(members), len(users)
