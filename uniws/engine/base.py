"""The engine interface: where streams, history and presence live and how publications travel.

Three engines implement it: `memory.MemoryEngine` (one worker), `sharded.ShardedEngine`
(a node's workers, each channel's stream owned by one of them, over the bus) and
`redis.RedisEngine` (a fleet of nodes). `tests/engine/contract.py` runs unchanged
against each.

One result shape: a method that may do I/O returns an awaitable, and `publish`
returns an `asyncio.Future` of (offset, epoch). An engine that finishes at once (the
memory engine always does) returns the future already done; awaiting a done future
does not suspend, so the hot path runs no coroutine per publication, and a caller that
wants to can look at `future.done()` first.

Delivery goes through the engine: the node learns of every publication, join and leave
(its own included) from `EngineHandler`, in the one order the engine gives a channel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

from ..channels import ChannelOptions

NO_POSITION = (0, "")           # a publish without history: nothing stored, no position


@dataclass(slots=True)
class Publication:
    """A sequenced publication: data is compact raw JSON; offset 0 = not in history."""

    data: bytes
    offset: int = 0
    tags: dict[str, str] | None = None


def done_future(loop: asyncio.AbstractEventLoop, result: Any) -> asyncio.Future:
    future = loop.create_future()
    future.set_result(result)
    return future


def failed_future(loop: asyncio.AbstractEventLoop, exc: BaseException) -> asyncio.Future:
    future = loop.create_future()
    future.set_exception(exc)
    return future


class OneNode:
    """What an engine without other nodes answers (memory, worker-sharded): nothing to connect
    to, always healthy, control reaches no one and surveys find no one."""

    _loop: asyncio.AbstractEventLoop

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def healthy(self) -> str | None:
        return None

    def publish_control(self, op: str, args: dict) -> asyncio.Future:
        return done_future(self._loop, None)

    async def survey(self, op: str, args: dict) -> list:
        return []

    def nodes(self) -> list[dict]:
        return []


class EngineHandler(Protocol):
    """Implemented by the node: what an engine calls."""

    def handle_publication(self, channel: str, pub: Publication, epoch: str) -> None: ...

    def handle_join_leave(self, channel: str, join: bool, info: bytes) -> None:
        """`info`: the ClientInfo as compact JSON (codec.client_info), pushed as it is."""

    def handle_gap(self, channels: list[str]) -> None:
        """Publications of these channels may have been lost (a broker connection dropped):
        their positioned subscribers must recover."""

    def handle_control(self, op: str, args: dict) -> None:
        """A node-wide command another node sent (subscribe, unsubscribe, disconnect, refresh)."""

    async def handle_survey(self, op: str, args: dict) -> Any:
        """Another node's question (`channels`): this node's JSON-able answer."""

    def node_info(self) -> dict:
        """This node's `info` entry, sent to the other nodes."""


class Engine(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def healthy(self) -> str | None:
        """None while the engine can serve, else why it cannot."""

    def publish(self, channel: str, data: bytes, opts: ChannelOptions, *, skip_history: bool = False,
                tags: dict[str, str] | None = None) -> asyncio.Future:
        """Sequence (when history is on), store and deliver: a future of (offset, epoch),
        NO_POSITION without history; it fails with ApiError when the publication was not
        accepted. Whatever goes elsewhere is sent before this returns, so publishes keep
        call order. Raises ApiError only for a channel the engine can never carry."""

    def publish_join_leave(self, channel: str, join: bool, info: bytes) -> None: ...

    async def subscribe(self, channel: str) -> None:
        """Receive the channel's publications (counted per channel); done once they flow."""

    def unsubscribe(self, channel: str) -> None: ...

    async def stream_top(self, channel: str) -> tuple[int, str]:
        """(top offset, epoch) of the channel's stream, creating the stream if needed."""

    async def history(self, channel: str, *, since: tuple[int, str] | None, limit: int,
                      reverse: bool) -> tuple[list[Publication], int, str]:
        """Retained publications selected as spec 06 §4.9 says, plus (top, epoch)."""

    async def remove_history(self, channel: str) -> None: ...

    async def add_presence(self, channel: str, client: str, info: bytes) -> None: ...

    async def remove_presence(self, channel: str, client: str) -> None: ...

    async def presence(self, channel: str) -> dict[str, bytes]:
        """Client id -> ClientInfo JSON of everyone present in the channel."""

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        """(clients, distinct users) present in the channel."""

    def publish_control(self, op: str, args: dict) -> asyncio.Future:
        """A command for every other node (done at once where there is none)."""

    async def survey(self, op: str, args: dict) -> list[Any]:
        """Every other node's answer."""

    def nodes(self) -> list[dict]:
        """The other live nodes' latest `info` entries."""

    def sweep(self) -> None: ...

    def num_streams(self) -> int: ...

    def num_presence_channels(self) -> int:
        """Gauges for `info`: streams and presence channels this engine holds or used here."""
