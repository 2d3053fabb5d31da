"""The memory engine over a node's workers: each channel's stream lives on its owner worker.

A call for a channel owned here goes to this worker's `MemoryEngine`; otherwise it is
a request to the owner over the bus (`cluster.Cluster`, `rpc.Rpc`); a publication kept in
no history is posted to the owner (a U message), which sends it to every worker, so a
channel's publications reach every subscriber in one order. Presence stays where the connections are: each
worker's memory engine holds its own connections' entries, and a read asks every
worker. Everything sent to an owner is sent before the call returns, so calls reach it
in call order. There are no other nodes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from ..cluster import decode_pubs
from ..errors import ApiError
from .base import NO_POSITION, OneNode, Publication, done_future, failed_future
from .memory import MemoryEngine, presence_counts


def _position(result: Any, _tail: bytes) -> tuple[int, str]:
    offset, epoch = result
    return offset, epoch


def _history(result: Any, tail: bytes) -> tuple[list[Publication], int, str]:
    top, epoch = result
    return decode_pubs(tail), top, epoch


class ShardedEngine(OneNode):
    def __init__(self, cluster) -> None:
        self.cluster = cluster
        self.local: MemoryEngine = cluster.local
        self.loop = self._loop = cluster.node.loop
        self._unstored = done_future(self.loop, NO_POSITION)   # what every unstored publish owned here answers

    def _remote(self, channel: str) -> int | None:
        owner = self.cluster.owner(channel)
        return None if owner == self.cluster.index else owner

    def publish(self, channel, data, opts, *, skip_history=False, tags=None) -> asyncio.Future:
        try:
            if skip_history or not opts.history_enabled:
                # No position to answer with: sent by the owner (a post when it is another
                # worker: one barrier per owner and loop turn confirms a whole batch).
                forwarded = self.cluster.publish_unstored(channel, data, tags)
                return self._unstored if forwarded is None else forwarded
            owner = self._remote(channel)
            if owner is None:
                position = self.cluster.publish_local(channel, data, opts, tags)
                return done_future(self.loop, position)
            # The stream options travel with it: the owner stores as the worker that took the
            # publish decided (it still refuses a channel its own rules do not allow).
            args = {"channel": channel, "tags": tags, "history": [opts.history_size, opts.history_ttl]}
            return self.cluster.request(owner, "publish", args, data, _position)
        except ApiError as exc:
            return failed_future(self.loop, exc)

    def publish_join_leave(self, channel: str, join: bool, info: bytes) -> None:
        self.cluster.handle_join_leave(channel, join, info)

    async def subscribe(self, channel: str) -> None:
        pass                        # every worker reads every owner's broadcasts

    def unsubscribe(self, channel: str) -> None:
        pass

    async def stream_top(self, channel):
        owner = self._remote(channel)
        if owner is None:
            return await self.local.stream_top(channel)
        return await self.cluster.request(owner, "stream_top", {"channel": channel}, shape=_position)

    async def history(self, channel, *, since, limit, reverse):
        owner = self._remote(channel)
        if owner is None:
            return await self.local.history(channel, since=since, limit=limit, reverse=reverse)
        args = {"channel": channel, "since": since, "limit": limit, "reverse": reverse}
        return await self.cluster.request(owner, "history", args, shape=_history)

    async def remove_history(self, channel):
        owner = self._remote(channel)
        if owner is None:
            return await self.local.remove_history(channel)
        await self.cluster.request(owner, "remove_history", {"channel": channel})

    async def add_presence(self, channel: str, client: str, info: bytes) -> None:
        await self.local.add_presence(channel, client, info)

    async def remove_presence(self, channel: str, client: str) -> None:
        await self.local.remove_presence(channel, client)

    async def presence(self, channel: str) -> dict[str, bytes]:
        members = await self.local.presence(channel)
        for other in await self.cluster.survey("presence", {"channel": channel}):
            members.update((client, orjson.dumps(info)) for client, info in other.items())
        return members

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        return presence_counts(await self.presence(channel))

    def num_presence_channels(self) -> int:
        return self.local.num_presence_channels()

    def sweep(self) -> None:
        self.local.sweep()

    def num_streams(self) -> int:
        return self.local.num_streams()
