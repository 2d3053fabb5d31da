"""The engine contract against the worker-sharded memory engine: two workers' clusters on real
shared-memory rings in one process, the engine under test being worker 0's. Channels are spread
over both owners by their hash, so the suite runs through local calls and bus requests alike."""

from __future__ import annotations

import asyncio
import contextlib
import os

import pytest

from uniws.bus import Bus, BusFiles
from uniws.channels import ChannelOptions
from uniws.cluster import Cluster, owner_of
from uniws.engine.memory import MemoryEngine
from uniws.engine.sharded import ShardedEngine

from .contract import *  # noqa: F403


class Worker:
    """The node side a Cluster needs (cluster.Worker), delivering to a test's handler."""

    def __init__(self, loop, handler) -> None:
        self.loop = loop
        self.handler = handler
        self.tasks: set = set()

    class _Everything:
        def __contains__(self, channel: str) -> bool:
            return True

    wanted = _Everything()                # cluster.Worker.wanted: every channel

    def handle_publication(self, channel, pub, epoch) -> None:
        self.handler.handle_publication(channel, pub, epoch)

    def handle_join_leave(self, channel, join, info) -> None:
        self.handler.handle_join_leave(channel, join, info)

    def channel_options(self, channel: str) -> ChannelOptions:
        return ChannelOptions()              # every channel allowed; stream options come with the call

    def answer_survey(self, op, args):
        return {}

    async def apply_command(self, args, tail) -> None:
        pass

    def reset_clients(self) -> None:
        pass

    def run_soon(self, coro) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class _Silent:
    """Worker 1's deliveries are not the test's concern."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def test_contract_channels_cover_both_owners():
    names = ["c1", "h", "t", "new", "r", "ttl", "m", "d", "jl", "p"]
    assert {owner_of(name, 2) for name in names} == {0, 1}


@pytest.fixture
def engine_factory(tmp_path):
    @contextlib.asynccontextmanager
    async def make(handler, history_meta_ttl: float = 0.0):
        loop = asyncio.get_running_loop()
        files = BusFiles.create(str(tmp_path), 2, ring_bytes=1 << 22)
        buses, engines = [], []
        for index, delivered_to in enumerate((handler, _Silent())):
            local = MemoryEngine(None, loop, history_meta_ttl=history_meta_ttl)
            cluster = Cluster(Worker(loop, delivered_to), index, 2, local)
            local.set_handler(cluster)
            bus = Bus(loop, index, files, cluster)
            cluster.attach(bus)
            buses.append(bus)
            engines.append(ShardedEngine(cluster))
        # The owners' expiry runs on their own ticks: sweep both when the suite sweeps worker 0.
        engine = engines[0]
        engine.sweep = lambda: [e.local.sweep() for e in engines]
        try:
            yield engine
        finally:
            for bus in buses:
                bus.close()
            for fd in files.doorbells:
                os.close(fd)

    return make

