"""The engine interface the node codes against (memory now; the bus and Redis later).

Every method but `publish` is a coroutine so an engine may do I/O; `publish` returns
its result directly when it can (the hot path runs no coroutine per publication). The
memory engine never suspends, which is what makes "read the stream top, then register in the hub"
atomic inside one worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

from ..channels import ChannelOptions


@dataclass(slots=True)
class Publication:
    """A sequenced publication: data is compact raw JSON; offset 0 = not in history."""

    data: bytes
    offset: int = 0
    tags: dict[str, str] | None = None


async def position_of(outcome: Awaitable[Any]) -> tuple[int, str]:
    """(offset, epoch) of a publish that did not finish at once: a Future means it was posted
    to the channel's owner (done when the owner has served it, with no position; it raises
    the owner's ApiError when the owner refused it), else an awaitable of the position."""
    if isinstance(outcome, asyncio.Future):
        await outcome
        return 0, ""
    return await outcome


class EngineHandler(Protocol):
    """Implemented by the node: what an engine calls when a publication is to be delivered."""

    def handle_publication(self, channel: str, pub: Publication, epoch: str) -> None: ...


class Engine(Protocol):
    def publish(self, channel: str, data: bytes, opts: ChannelOptions, *, skip_history: bool = False,
                tags: dict[str, str] | None = None) -> tuple[int, str] | Awaitable[tuple[int, str]]:
        """Sequence (when history is on), store and broadcast: (offset, epoch) when done at
        once (no coroutine per publication on the hot path), else an awaitable of it."""

    async def stream_top(self, channel: str) -> tuple[int, str]:
        """(top offset, epoch) of the channel's stream, creating the stream if needed."""

    async def history(self, channel: str, *, since: tuple[int, str] | None, limit: int,
                      reverse: bool) -> tuple[list[Publication], int, str]:
        """Retained publications selected as spec 06 §4.9 says, plus (top, epoch)."""

    async def remove_history(self, channel: str) -> None: ...
