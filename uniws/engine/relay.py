"""A broker engine (Redis) shared by a node's workers: one broker delivery per node, not per worker.

Every worker talks to the broker itself for what has an answer: publish (the broker
assigns offsets), history, stream positions, presence, control. Publications come
in differently: each channel is received by one worker, its owner (the same stable
hash that shards memory streams), which subscribes at the broker for the whole node
and relays every publication, join and leave over the bus. So a publication crosses
the broker once per node whatever the worker count, and every worker sees a channel's
publications in the broker's order.

A worker that wants a channel asks its owner (`want`, answered once the broker
subscription is active, so a position read afterwards cannot miss a publication) and
releases it (`unwant`); the owner counts wants per worker. A restarted worker says
hello: the others send their wants for the channels it owns again, and their positioned
subscribers of those channels recover (what the dead owner was relaying may be lost);
the owners forget what the dead worker wanted.

Only worker 0 takes part in the broker's control traffic (node registry, surveys,
commands from other nodes); the others reach it over the bus.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .._shmring import MessageTooLarge
from ..cluster import encode_pub
from .base import Publication

log = logging.getLogger("uniws.relay")

START_WAIT = 10.0         # seconds a want waits for this worker's broker to finish starting


class BrokerRelay:
    def __init__(self, cluster, broker) -> None:
        self.cluster = cluster
        self.broker = broker
        self.node = cluster.node
        self.loop: asyncio.AbstractEventLoop = self.node.loop
        self.index = cluster.index
        self._wants: dict[str, dict[int, int]] = {}    # channel owned here -> worker -> wants
        # Other workers may ask for channels before this one's broker has made its first
        # connection (workers start together): their wants wait for it, within a bound.
        self._started = asyncio.Event()
        cluster.relay = self

    def _owner(self, channel: str) -> int:
        return self.cluster.owner(channel)

    # -- the engine interface: straight to the broker ------------------------------------------

    async def start(self) -> None:
        try:
            await self.broker.start()
        finally:
            self._started.set()

    async def close(self) -> None:
        await self.broker.close()

    def healthy(self) -> str | None:
        return self.broker.healthy()

    def publish(self, channel, data, opts, *, skip_history=False, tags=None) -> asyncio.Future:
        return self.broker.publish(channel, data, opts, skip_history=skip_history, tags=tags)

    def publish_join_leave(self, channel: str, join: bool, info: bytes) -> None:
        self.broker.publish_join_leave(channel, join, info)

    async def stream_top(self, channel):
        return await self.broker.stream_top(channel)

    async def history(self, channel, *, since, limit, reverse):
        return await self.broker.history(channel, since=since, limit=limit, reverse=reverse)

    async def remove_history(self, channel):
        await self.broker.remove_history(channel)

    async def add_presence(self, channel: str, client: str, info: bytes) -> None:
        await self.broker.add_presence(channel, client, info)

    async def remove_presence(self, channel: str, client: str) -> None:
        await self.broker.remove_presence(channel, client)

    async def presence(self, channel: str) -> dict[str, bytes]:
        return await self.broker.presence(channel)

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        return await self.broker.presence_stats(channel)

    def publish_control(self, op: str, args: dict) -> asyncio.Future:
        return self.broker.publish_control(op, args)

    def sweep(self) -> None:
        self.broker.sweep()

    def num_streams(self) -> int:
        return self.broker.num_streams()

    def num_presence_channels(self) -> int:
        return self.broker.num_presence_channels()

    # -- control traffic: worker 0 -------------------------------------------------------------

    async def survey(self, op: str, args: dict) -> list[Any]:
        if self.index == 0:
            return await self.broker.survey(op, args)
        answers, _ = await self.cluster.request(0, "node_survey", {"survey": op, "args": args})
        return answers

    def nodes(self) -> list[dict]:
        """The registry as far as this worker knows it (worker 0 holds it: see current_nodes)."""
        return self.broker.nodes() if self.index == 0 else []

    async def current_nodes(self) -> list[dict]:
        """The other nodes, from worker 0's registry whichever worker asks."""
        if self.index == 0:
            return self.broker.nodes()
        nodes, _ = await self.cluster.request(0, "nodes", {})
        return nodes

    # -- receiving channels: through their owner ----------------------------------------------

    async def subscribe(self, channel: str) -> None:
        owner = self._owner(channel)
        if owner == self.index:
            await self.want(self.index, channel)
        else:
            await self.cluster.request(owner, "want", {"worker": self.index, "channel": channel})

    def unsubscribe(self, channel: str) -> None:
        owner = self._owner(channel)
        if owner == self.index:
            self.unwant(self.index, channel)
            return
        try:
            self.cluster.request(owner, "unwant", {"worker": self.index, "channel": channel}) \
                .add_done_callback(_quiet)
        except Exception:
            log.exception("unwant of %.80r not sent to worker %d", channel, owner)

    async def want(self, worker: int, channel: str) -> None:
        """On the owner: count a worker's want; done once the broker subscription is active."""
        if not self._started.is_set():
            await asyncio.wait_for(self._started.wait(), START_WAIT)
        counts = self._wants.setdefault(channel, {})
        counts[worker] = counts.get(worker, 0) + 1
        try:
            await self.broker.subscribe(channel)
        except BaseException:
            self._uncount(worker, channel)        # the broker released its own count
            raise

    def unwant(self, worker: int, channel: str) -> None:
        if self._uncount(worker, channel):
            self.broker.unsubscribe(channel)

    def _uncount(self, worker: int, channel: str) -> bool:
        counts = self._wants.get(channel)
        if not counts or not counts.get(worker):
            return False
        counts[worker] -= 1
        if not counts[worker]:
            del counts[worker]
            if not counts:
                del self._wants[channel]
        return True

    def worker_restarted(self, worker: int) -> None:
        """A worker came back: forget what its previous life wanted of channels owned here, and
        ask again for what this worker wants of the channels it owns."""
        for channel in [c for c, counts in self._wants.items() if worker in counts]:
            for _ in range(self._wants[channel][worker]):
                self.unwant(worker, channel)
        mine = [channel for channel in self.node.hub.wanted_channels() if self._owner(channel) == worker]
        log.info("worker %d restarted: asking it again for %d channels", worker, len(mine))
        if mine:
            self.node.handle_gap(mine)
            for channel in mine:
                self.cluster.request(worker, "want", {"worker": self.index, "channel": channel}) \
                    .add_done_callback(_quiet)

    # -- the broker's handler on the owner: relay over the bus -----------------------------------

    def handle_publication(self, channel: str, pub: Publication, epoch: str) -> None:
        try:
            self.cluster.bus.broadcast(encode_pub(channel, epoch, pub))
        except MessageTooLarge as exc:
            log.error("publication on %.80r not relayed to the other workers: %s", channel, exc)
            self._gap_everywhere([channel])
        if channel in self.node.wanted:
            self.node.handle_publication(channel, pub, epoch)

    def handle_join_leave(self, channel: str, join: bool, info: bytes) -> None:
        self.cluster.handle_join_leave(channel, join, info)

    def handle_gap(self, channels: list[str]) -> None:
        self._gap_everywhere(channels)

    def _gap_everywhere(self, channels: list[str]) -> None:
        try:
            self.cluster.command("gap", {"channels": channels})
        except Exception:
            log.exception("gap of %d channels not sent to the other workers", len(channels))
        self.node.handle_gap(channels)

    def handle_control(self, op: str, args: dict) -> None:
        self.node.handle_control(op, args)

    async def handle_survey(self, op: str, args: dict) -> Any:
        return await self.node.handle_survey(op, args)

    def node_info(self) -> dict:
        return self.node.node_info()


def _quiet(done: asyncio.Future) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.warning("want/unwant not served: %s", done.exception())
