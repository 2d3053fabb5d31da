"""Engine contract: what every engine (memory, worker-sharded, Redis) must do, written
against the interface only (ENGINE.md). A runner module imports these tests and defines
the `engine_factory` fixture: `engine_factory(handler, **opts)` -> async context manager
yielding a started engine (opts: history_meta_ttl in seconds).
"""

from __future__ import annotations

import asyncio

import pytest

from uniws.channels import ChannelOptions
from uniws.engine.base import Publication
from uniws.errors import ApiError

from .recording import RecordingHandler

HISTORY = ChannelOptions(history_size=10, history_ttl=60)
NO_HISTORY = ChannelOptions()
TEST_TIMEOUT = 30.0


def run(coro):
    async def bounded():
        async with asyncio.timeout(TEST_TIMEOUT):
            return await coro
    return asyncio.run(bounded())


def offsets(pubs: list[Publication]) -> list[int]:
    return [p.offset for p in pubs]


def test_publish_assigns_increasing_offsets_in_one_epoch(engine_factory):
    async def body():
        async with engine_factory(RecordingHandler()) as engine:
            results = [await engine.publish("c1", b'{"n":%d}' % i, HISTORY) for i in range(3)]
            assert [r[0] for r in results] == [1, 2, 3]
            epochs = {r[1] for r in results}
            assert len(epochs) == 1 and epochs != {""}
            assert await engine.publish("c1", b"{}", NO_HISTORY) == (0, "")
            assert await engine.publish("c1", b"{}", HISTORY, skip_history=True) == (0, "")
            assert (await engine.history("c1", since=None, limit=0, reverse=False))[1] == 3
    run(body())


def test_history_selection(engine_factory):
    async def body():
        async with engine_factory(RecordingHandler()) as engine:
            for i in range(1, 6):
                _, epoch = await engine.publish("h", b'{"i":%d}' % i, HISTORY, tags={"k": str(i)} if i == 2 else None)
            pubs, top, ep = await engine.history("h", since=None, limit=-1, reverse=False)
            assert (offsets(pubs), top, ep) == ([1, 2, 3, 4, 5], 5, epoch)
            assert pubs[0].data == b'{"i":1}' and pubs[1].tags == {"k": "2"} and not pubs[0].tags
            h = engine.history
            assert offsets((await h("h", since=None, limit=2, reverse=False))[0]) == [1, 2]
            assert offsets((await h("h", since=None, limit=2, reverse=True))[0]) == [5, 4]
            assert offsets((await h("h", since=None, limit=-1, reverse=True))[0]) == [5, 4, 3, 2, 1]
            assert offsets((await h("h", since=(2, epoch), limit=-1, reverse=False))[0]) == [3, 4, 5]
            assert offsets((await h("h", since=(2, epoch), limit=1, reverse=False))[0]) == [3]
            assert offsets((await h("h", since=(4, epoch), limit=-1, reverse=True))[0]) == [3, 2, 1]
            assert offsets((await h("h", since=(4, epoch), limit=2, reverse=True))[0]) == [3, 2]
            assert offsets((await h("h", since=(5, epoch), limit=-1, reverse=False))[0]) == []
            assert offsets((await h("h", since=(2, ""), limit=-1, reverse=False))[0]) == [3, 4, 5]
            assert await h("h", since=None, limit=0, reverse=False) == ([], 5, epoch)
            with pytest.raises(ApiError) as err:
                await h("h", since=(1, epoch + "x"), limit=-1, reverse=False)
            assert err.value.code == 112
            with pytest.raises(ApiError) as err:
                await h("h", since=(0, epoch), limit=-1, reverse=True)
            assert err.value.code == 100
    run(body())


def test_history_is_trimmed_to_history_size(engine_factory):
    async def body():
        async with engine_factory(RecordingHandler()) as engine:
            opts = ChannelOptions(history_size=3, history_ttl=60)
            for i in range(5):
                await engine.publish("t", b"%d" % i, opts)
            pubs, top, _ = await engine.history("t", since=None, limit=-1, reverse=False)
            assert offsets(pubs) == [3, 4, 5] and top == 5
            assert [p.data for p in pubs] == [b"2", b"3", b"4"]
    run(body())


def test_stream_top_creates_the_stream(engine_factory):
    async def body():
        async with engine_factory(RecordingHandler()) as engine:
            top, epoch = await engine.stream_top("new")
            assert top == 0 and epoch
            assert await engine.stream_top("new") == (0, epoch)
            assert await engine.publish("new", b"1", HISTORY) == (1, epoch)
            assert await engine.stream_top("new") == (1, epoch)
    run(body())


def test_remove_history_keeps_top_and_epoch(engine_factory):
    async def body():
        async with engine_factory(RecordingHandler()) as engine:
            await engine.publish("r", b"1", HISTORY)
            _, epoch = await engine.publish("r", b"2", HISTORY)
            await engine.remove_history("r")
            assert await engine.history("r", since=None, limit=-1, reverse=False) == ([], 2, epoch)
            assert await engine.publish("r", b"3", HISTORY) == (3, epoch)
            await engine.remove_history("never-used")
    run(body())


def test_history_ttl_drops_publications_but_keeps_top_and_epoch(engine_factory):
    async def body():
        async with engine_factory(RecordingHandler()) as engine:
            opts = ChannelOptions(history_size=10, history_ttl=1)
            await engine.publish("ttl", b"1", opts)
            _, epoch = await engine.publish("ttl", b"2", opts)
            async with asyncio.timeout(5):
                while True:
                    engine.sweep()
                    pubs, top, ep = await engine.history("ttl", since=None, limit=-1, reverse=False)
                    if not pubs:
                        break
                    await asyncio.sleep(0.1)       # poll until the TTL has passed
            assert (top, ep) == (2, epoch)
            assert await engine.publish("ttl", b"3", opts) == (3, epoch)
    run(body())


def test_history_meta_ttl_drops_the_stream(engine_factory):
    async def body():
        async with engine_factory(RecordingHandler(), history_meta_ttl=1) as engine:
            _, epoch = await engine.publish("m", b"1", HISTORY)
            await asyncio.sleep(2.2)       # let the 1 s meta TTL pass without touching the stream
            engine.sweep()
            top, new_epoch = await engine.stream_top("m")
            assert top == 0 and new_epoch and new_epoch != epoch
            assert await engine.publish("m", b"2", HISTORY) == (1, new_epoch)
    run(body())


def test_publications_delivered_in_order_after_subscribe(engine_factory):
    async def body():
        handler = RecordingHandler()
        async with engine_factory(handler) as engine:
            await engine.subscribe("d")
            futures = [engine.publish("d", b'{"n":%d}' % i, HISTORY) for i in range(50)]
            results = await asyncio.gather(*futures)
            epoch = results[0][1]
            await handler.wait_for(lambda: len(handler.pubs_of("d")) == 50)
            pubs = handler.pubs_of("d")
            assert offsets(pubs) == list(range(1, 51))
            assert [p.data for p in pubs] == [b'{"n":%d}' % i for i in range(50)]
            assert {e for ch, _, e in handler.publications if ch == "d"} == {epoch}
            await engine.publish("d", b'"plain"', NO_HISTORY, tags={"a": "b"})
            await handler.wait_for(lambda: len(handler.pubs_of("d")) == 51)
            last = handler.publications[-1]
            assert (last[1].data, last[1].offset, last[1].tags, last[2]) == (b'"plain"', 0, {"a": "b"}, "")
    run(body())


def test_join_leave_delivered_with_exact_info_bytes(engine_factory):
    async def body():
        handler = RecordingHandler()
        async with engine_factory(handler) as engine:
            await engine.subscribe("jl")
            info = b'{"user":"u\\u003c1","client":"c1","conn_info":{"a":[1,2.50,"\\u00e9"]},"chan_info":"x"}'
            engine.publish_join_leave("jl", True, info)
            engine.publish_join_leave("jl", False, b'{"user":"","client":"c2"}')
            await handler.wait_for(lambda: len(handler.join_leaves) == 2)
            assert handler.join_leaves == [("jl", True, info), ("jl", False, b'{"user":"","client":"c2"}')]
    run(body())


def test_presence_add_read_remove_stats(engine_factory):
    async def body():
        async with engine_factory(RecordingHandler()) as engine:
            infos = {
                "c1": b'{"user":"u1","client":"c1","conn_info":{"x":1}}',
                "c2": b'{"user":"u1","client":"c2"}',
                "c3": b'{"user":"u2","client":"c3","chan_info":[1]}',
            }
            for client, info in infos.items():
                await engine.add_presence("p", client, info)
            assert await engine.presence("p") == infos
            assert await engine.presence_stats("p") == (3, 2)
            await engine.remove_presence("p", "c1")
            assert await engine.presence("p") == {k: v for k, v in infos.items() if k != "c1"}
            assert await engine.presence_stats("p") == (2, 2)
            assert await engine.presence("empty") == {}
            assert await engine.presence_stats("empty") == (0, 0)
    run(body())


def test_engine_is_healthy_when_started(engine_factory):
    async def body():
        async with engine_factory(RecordingHandler()) as engine:
            assert engine.healthy() is None
    run(body())
