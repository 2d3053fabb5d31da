"""Redis-only behaviour of the Redis engine against real redis-server processes: key layout
(08 §10 check 22), epochs, presence TTL and refresh, broker subscriptions, sharding, node
registry / control / surveys between engine instances, and faults (Redis killed, restarted,
down at start)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import pytest

from tests.redisfixture import RedisServer
from uniws.channels import ChannelOptions
from uniws.eager import run_eager
from uniws.engine.redis import RedisEngine
from uniws.engine.redis_shards import parse_address, shard_index
from uniws.errors import ApiError

from .contract import HISTORY, run
from .recording import RecordingHandler

FAST_CONTROL = {"node_interval": 0.2, "node_stale": 0.8, "ping_interval": 0.1}


@contextlib.asynccontextmanager
async def engine_on(servers, handler=None, *, uid=None, addresses=None, **opts):
    engine = RedisEngine(handler or RecordingHandler(uid or "n"),
                         addresses or [parse_address(s.address) for s in servers],
                         node_uid=uid or str(uuid.uuid4()), **opts)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.close()


def test_key_layout_offsets_and_epoch_across_two_engines(redis_server):
    async def body():
        async with engine_on([redis_server]) as a, engine_on([redis_server]) as b:
            opts = ChannelOptions(history_size=10, history_ttl=60)
            offset, epoch = await a.publish("chat", b'{"m":1}', opts)
            assert offset == 1 and epoch.isdigit() and abs(int(epoch) / 1e6 - time.time()) < 5   # microseconds
            assert await b.publish("chat", b'{"m":2}', opts) == (2, epoch)
    run(body())
    cmd = redis_server.command
    assert cmd("XLEN", "centrifugo.stream.chat") == 2
    assert [e[0] for e in cmd("XRANGE", "centrifugo.stream.chat", "-", "+")] == [b"1-0", b"2-0"]
    meta = cmd("HGETALL", "centrifugo.stream.meta.chat")
    assert dict(zip(meta[::2], meta[1::2]))[b"s"] == b"2"
    assert 55 <= cmd("TTL", "centrifugo.stream.chat") <= 60
    assert cmd("TTL", "centrifugo.stream.meta.chat") == -1        # no history_meta_ttl: kept forever


def test_prefix_and_meta_ttl_on_keys(redis_server):
    async def body():
        async with engine_on([redis_server], prefix="app", history_meta_ttl=300) as e:
            await e.publish("x", b"1", HISTORY)
            await e.add_presence("x", "c1", b'{"user":"u","client":"c1"}')
    run(body())
    cmd = redis_server.command
    assert 295 <= cmd("TTL", "app.stream.meta.x") <= 300
    assert cmd("HKEYS", "app.presence.data.x") == [b"c1"]
    assert 55 <= cmd("TTL", "app.presence.expire.x") <= 60
    assert cmd("EXISTS", "centrifugo.stream.x") == 0


def test_presence_entries_expire_and_are_purged_on_read(redis_server):
    async def body():
        async with engine_on([redis_server]) as e:
            await e.add_presence("p", "old", b'{"user":"u1","client":"old"}')
            await e.add_presence("p", "new", b'{"user":"u2","client":"new"}')
            redis_server.command("ZADD", "centrifugo.presence.expire.p", "1", "old")   # expired long ago
            assert list(await e.presence("p")) == ["new"]
            assert redis_server.command("HKEYS", "centrifugo.presence.data.p") == [b"new"]
            assert await e.presence_stats("p") == (1, 1)
    run(body())


def test_presence_refreshed_by_one_periodic_task(redis_server):
    async def body():
        async with engine_on([redis_server], presence_ttl=60, presence_update_interval=0.2) as e:
            await e.add_presence("p", "c", b'{"user":"u","client":"c"}')
            redis_server.command("ZADD", "centrifugo.presence.expire.p", "1", "c")
            handler = RecordingHandler()
            await handler.wait_for(lambda: int(redis_server.command("ZSCORE", "centrifugo.presence.expire.p", "c"))
                                   > time.time())
            await e.remove_presence("p", "c")
            assert await e.presence("p") == {}
    run(body())


def test_subscribe_is_ref_counted_and_unsubscribe_delayed(redis_server):
    def numsub(ch):
        return redis_server.command("PUBSUB", "NUMSUB", "centrifugo.client." + ch)[1]

    async def body():
        handler = RecordingHandler()
        async with engine_on([redis_server], handler, unsubscribe_delay=0.3) as e:
            await e.subscribe("s")
            await e.subscribe("s")
            assert numsub("s") == 1
            e.unsubscribe("s")
            e.unsubscribe("s")
            released = time.monotonic()
            assert numsub("s") == 1                       # not before the delay
            await handler.wait_for(lambda: numsub("s") == 0)
            assert time.monotonic() - released >= 0.3
            await e.subscribe("r")
            e.unsubscribe("r")
            await e.subscribe("r")                        # within the delay: keeps the broker subscription
            await asyncio.sleep(0.6)                      # past the delay
            assert numsub("r") == 1
            await e.publish("r", b"1", HISTORY)
            await handler.wait_for(lambda: len(handler.pubs_of("r")) == 1)
    run(body())


def test_channels_are_spread_over_shards_by_jump_hash(redis_servers):
    servers = redis_servers(2)
    channels = [f"ch{i}" for i in range(12)]

    async def body():
        async with engine_on(servers) as e:
            for ch in channels:
                await e.publish(ch, b"1", HISTORY)
    run(body())
    for ch in channels:
        owner = shard_index(ch, 2)
        assert servers[owner].command("EXISTS", f"centrifugo.stream.{ch}") == 1
        assert servers[1 - owner].command("EXISTS", f"centrifugo.stream.{ch}") == 0
    assert {shard_index(ch, 2) for ch in channels} == {0, 1}


def test_script_cache_flush_is_survived(redis_server):
    async def body():
        async with engine_on([redis_server]) as e:
            await e.publish("f", b"1", HISTORY)
            redis_server.command("SCRIPT", "FLUSH")
            assert (await e.publish("f", b"2", HISTORY))[0] == 2
            assert (await e.history("f", since=None, limit=-1, reverse=False))[1] == 2
    run(body())


def test_registry_control_survey_and_shutdown(redis_servers):
    servers = redis_servers(2)

    async def body():
        ha, hb = RecordingHandler("A", {"n": 1}), RecordingHandler("B", {"n": 2})
        async with engine_on(servers, ha, uid="A", **FAST_CONTROL) as a:
            assert a.nodes() == [] and await a.survey("channels", {}) == []
            b = RedisEngine(hb, [parse_address(s.address) for s in servers], node_uid="B", **FAST_CONTROL)
            await b.start()
            worker = RedisEngine(RecordingHandler("B1"), [parse_address(s.address) for s in servers],
                                 node_uid="B", control=False, **FAST_CONTROL)
            await worker.start()
            await ha.wait_for(lambda: [n["uid"] for n in a.nodes()] == ["B"])
            await hb.wait_for(lambda: [n["uid"] for n in b.nodes()] == ["A"])
            for i in range(4):                            # round-robin over both shards
                await a.publish_control("disconnect", {"user": "56", "i": i})
            await hb.wait_for(lambda: len(hb.controls) == 4)
            # Round-robin over shards: each arrives once; order across shards is not kept.
            assert sorted(hb.controls, key=lambda c: c[1]["i"]) == [("disconnect", {"user": "56", "i": i})
                                                                    for i in range(4)]
            await worker.publish_control("unsubscribe", {"channel": "x"})   # a non-control worker may send
            await ha.wait_for(lambda: ha.controls == [("unsubscribe", {"channel": "x"})])
            assert ha.controls == [("unsubscribe", {"channel": "x"})]          # never its own
            assert await a.survey("channels", {"pattern": "*"}) == [{"n": 2}]
            assert hb.surveys == [("channels", {"pattern": "*"})]
            with pytest.raises(ApiError) as err:
                await a.survey("fail", {})
            assert err.value.code == 100
            await worker.close()
            await b.close()                               # SHUTDOWN: dropped at once
            await ha.wait_for(lambda: a.nodes() == [], timeout=0.5)
    run(body())


def test_crashed_node_goes_stale(redis_server):
    async def body():
        ha = RecordingHandler("A")
        async with engine_on([redis_server], ha, uid="A", **FAST_CONTROL) as a:
            b = RedisEngine(RecordingHandler("B"), [parse_address(redis_server.address)], node_uid="B",
                            **FAST_CONTROL)
            await b.start()
            await ha.wait_for(lambda: len(a.nodes()) == 1)
            for task in b._tasks:                          # crash: no SHUTDOWN, no more NODE
                task.cancel()
            for shard in b.shards:
                await shard.stop()
            gone = time.monotonic()
            await ha.wait_for(lambda: a.nodes() == [], timeout=3)
            assert time.monotonic() - gone >= 0.5         # stale only after node_stale (0.8 s)
            a.sweep()
            assert a._registry == {}
    run(body())


def test_survey_times_out_with_api_error_100(redis_server):
    async def body():
        ha = RecordingHandler("A")
        async with engine_on([redis_server], ha, uid="A", survey_timeout=0.3, **FAST_CONTROL) as a:
            hb = RecordingHandler("B")

            async def never(op, args):
                await asyncio.Event().wait()
            hb.handle_survey = never
            async with engine_on([redis_server], hb, uid="B", **FAST_CONTROL):
                await ha.wait_for(lambda: len(a.nodes()) == 1)
                with pytest.raises(ApiError) as err:
                    await a.survey("channels", {})
                assert err.value.code == 100
    run(body())


def test_redis_killed_and_restarted_under_publish_loop(redis_server):
    async def body():
        handler = RecordingHandler()
        async with engine_on([redis_server], handler, read_timeout=1.0, reconnect_max_delay=0.2,
                             ping_interval=0.1) as e:
            await e.subscribe("live")
            await e.subscribe("other")
            outcomes: list[object] = []
            stop = asyncio.Event()

            async def loop():
                while not stop.is_set():
                    try:
                        outcomes.append(await e.publish("live", b"1", HISTORY))
                    except ApiError as exc:
                        outcomes.append(exc.code)
                    await asyncio.sleep(0.005)
            publisher = asyncio.create_task(loop())
            await handler.wait_for(lambda: len(outcomes) > 10)
            redis_server.kill()
            await handler.wait_for(lambda: e.healthy() is not None)
            assert redis_server.address in e.healthy()
            failures = len(outcomes)
            await handler.wait_for(lambda: outcomes.count(100) >= 5)
            with pytest.raises(ApiError):
                await e.subscribe("while-down")
            with pytest.raises(ApiError):
                await e.history("live", since=None, limit=-1, reverse=False)
            redis_server.start()                           # same port, empty data
            await handler.wait_for(lambda: e.healthy() is None)
            await handler.wait_for(lambda: handler.gaps == [["live", "other"]])
            await handler.wait_for(lambda: isinstance(outcomes[-1], tuple))
            stop.set()
            await publisher
            assert set(outcomes[failures:]) - {100} and all(o == 100 or isinstance(o, tuple) for o in outcomes)
            before = len(handler.pubs_of("other"))
            await e.publish("other", b"2", HISTORY)       # delivery resumed on the re-subscribed channel
            await handler.wait_for(lambda: len(handler.pubs_of("other")) == before + 1)
    run(body())


def test_redis_down_at_start_then_recovers(redis_servers):
    server = redis_servers(1)[0]
    server.kill()

    async def body():
        handler = RecordingHandler()
        engine = RedisEngine(handler, [parse_address(server.address)], node_uid="n", connect_timeout=0.5,
                             reconnect_max_delay=0.2)
        started = time.monotonic()
        await engine.start()
        try:
            assert time.monotonic() - started < 3
            reason = engine.healthy()
            assert reason and server.address in reason and "cannot connect" in reason
            with pytest.raises(ApiError) as err:
                await engine.publish("c", b"1", HISTORY)
            assert err.value.code == 100
            with pytest.raises(ApiError):
                await engine.subscribe("c")
            server.start()
            await handler.wait_for(lambda: engine.healthy() is None)
            await engine.subscribe("c")
            assert await engine.publish("c", b"1", HISTORY) == (1, (await engine.stream_top("c"))[1])
            await handler.wait_for(lambda: len(handler.pubs_of("c")) == 1)
            assert handler.gaps == []                     # never connected before: nothing was lost
        finally:
            await engine.close()
    run(body())


def test_password_and_database_from_the_address():
    server = RedisServer(extra_args=("--requirepass", "s3cret")).start()
    try:
        async def body():
            good = RedisEngine(RecordingHandler(), [parse_address(f"redis://:s3cret@{server.address}/3")],
                               node_uid="n")
            await good.start()
            try:
                assert good.healthy() is None
                await good.subscribe("a")
                assert await good.publish("a", b"1", HISTORY) == (1, (await good.stream_top("a"))[1])
            finally:
                await good.close()
            bad = RedisEngine(RecordingHandler(), [parse_address(f"redis://:wrong@{server.address}")],
                              node_uid="m", reconnect_max_delay=0.2)
            await bad.start()
            try:
                assert "WRONGPASS" in bad.healthy() or "invalid" in bad.healthy()
            finally:
                await bad.close()
        run(body())
        assert server.command("EXISTS", "centrifugo.stream.a", prefix=(("AUTH", "s3cret"), ("SELECT", "3"))) == 1
        assert server.command("EXISTS", "centrifugo.stream.a", prefix=(("AUTH", "s3cret"),)) == 0
    finally:
        server.kill()


def test_publication_crosses_engines_and_handler_errors_do_not_break_delivery(redis_servers):
    servers = redis_servers(2)

    async def body():
        hb = RecordingHandler("B")
        calls = []
        record = hb.handle_publication

        def flaky(channel, pub, epoch):
            calls.append((channel, pub.offset))
            if (channel, pub.offset) == ("x", 1):
                raise RuntimeError("handler bug")
            record(channel, pub, epoch)
        hb.handle_publication = flaky
        async with engine_on(servers, uid="A") as a, engine_on(servers, hb, uid="B") as b:
            for ch in ("x", "y"):
                await b.subscribe(ch)
            for i in range(3):
                await a.publish("x", b"%d" % i, HISTORY)
                await a.publish("y", b"%d" % i, HISTORY)
            await hb.wait_for(lambda: len(hb.publications) == 5)
            assert [p.offset for p in hb.pubs_of("y")] == [1, 2, 3]
            assert [p.offset for p in hb.pubs_of("x")] == [2, 3]       # x/1 hit the bug
            assert b.healthy() is None
    run(body())


def test_engine_from_config(redis_server, tmp_path):
    import json

    from uniws import config as config_module
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"engine": "redis", "redis_address": f"redis://{redis_server.address}/1",
                                "redis_prefix": "cfg", "presence_ttl": "30s", "history_meta_ttl": "100s"}))
    cfg, _ = config_module.load_config(str(path), {}, {})

    async def body():
        engine = RedisEngine.from_config(cfg, RecordingHandler(), node_uid="n")
        assert (engine.prefix, engine.presence_ttl, engine.meta_ttl) == ("cfg", 30, 100)
        await engine.start()
        try:
            await engine.publish("k", b"1", HISTORY)
        finally:
            await engine.close()
    run(body())
    assert redis_server.command("EXISTS", "cfg.stream.k", prefix=(("SELECT", "1"),)) == 1


def test_stalled_redis_fails_calls_within_read_timeout_then_recovers(redis_server):
    import os
    import signal

    async def body():
        handler = RecordingHandler()
        async with engine_on([redis_server], handler, read_timeout=0.5, ping_interval=0.1,
                             reconnect_max_delay=0.2, connect_timeout=0.3) as e:
            await e.subscribe("s")
            os.kill(redis_server.proc.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                with pytest.raises(ApiError) as err:
                    await e.publish("s", b"1", HISTORY)
                assert err.value.code == 100 and time.monotonic() - started < 2
                assert "redis_read_timeout" in e.healthy() or "cannot connect" in e.healthy()
            finally:
                os.kill(redis_server.proc.pid, signal.SIGCONT)
            await handler.wait_for(lambda: e.healthy() is None)
            await handler.wait_for(lambda: handler.gaps == [["s"]])
            await e.publish("s", b"2", HISTORY)
            await handler.wait_for(lambda: [p.data for p in handler.pubs_of("s")][-1:] == [b"2"])
    run(body())


def test_sentinel_finds_the_master_and_follows_a_failover(redis_servers, tmp_path):
    from tests.redisfixture import RedisSentinel
    from uniws.engine.redis_shards import parse_sentinel_group

    master = redis_servers(1)[0]
    replica = RedisServer(extra_args=("--replicaof", "127.0.0.1", str(master.port))).start()
    sentinel = RedisSentinel(master, tmp_path).start()
    try:
        async def body():
            handler = RecordingHandler()
            address = parse_sentinel_group(f"127.0.0.1:1,{sentinel.address}", "mymaster")  # first one is dead
            async with engine_on([], handler, addresses=[address], read_timeout=1.0, reconnect_max_delay=0.2,
                                 ping_interval=0.1) as e:
                assert e.healthy() is None
                await e.subscribe("s")
                _, epoch = await e.publish("s", b"1", HISTORY)
                assert master.command("EXISTS", "centrifugo.stream.s") == 1
                # Wait until the replica has the data and the sentinel knows the replica, then fail over.
                await handler.wait_for(lambda: replica.command("EXISTS", "centrifugo.stream.s") == 1)
                # Retried until the sentinel has found the replica fit (NOGOODSLAVE before that).
                await handler.wait_for(lambda: sentinel.command("SENTINEL", "FAILOVER", "mymaster") == b"OK",
                                       timeout=20)
                await handler.wait_for(lambda: replica.command("ROLE")[0] == b"master", timeout=20)
                # Until sentinel demotes the old master it still takes writes (as with any client).
                await handler.wait_for(lambda: master.command("ROLE")[0] == b"slave", timeout=20)
                outcome: list = []

                async def publish_ok():
                    try:
                        outcome.append(await e.publish("s", b"2", HISTORY))
                    except ApiError:
                        return False
                    return True
                async with asyncio.timeout(20):
                    while not await publish_ok():
                        await asyncio.sleep(0.1)           # retry interval while the engine reconnects
                assert outcome[-1][1] == epoch and outcome[-1][0] >= 2     # replicated meta: same epoch
                assert replica.command("XLEN", "centrifugo.stream.s") >= 2
                await handler.wait_for(lambda: b"2" in [p.data for p in handler.pubs_of("s")])
        run(body())
    finally:
        sentinel.kill()
        replica.kill()


def test_tls_verifies_the_server_unless_told_to_skip(tmp_path):
    server = RedisServer(tls_dir=tmp_path).start()
    try:
        async def body():
            strict = RedisEngine(RecordingHandler(), [parse_address(f"rediss://{server.address}")], node_uid="s",
                                 reconnect_max_delay=0.2)
            await strict.start()
            try:
                assert "CERTIFICATE_VERIFY_FAILED" in strict.healthy()       # self-signed: refused
            finally:
                await strict.close()
            lax = RedisEngine(RecordingHandler(), [parse_address(server.address, tls=True, tls_skip_verify=True)],
                              node_uid="l")
            await lax.start()
            try:
                assert lax.healthy() is None
                await lax.subscribe("t")
                assert (await lax.publish("t", b"1", HISTORY))[0] == 1
                await lax.presence("t")
            finally:
                await lax.close()
        run(body())
        assert server.command("XLEN", "centrifugo.stream.t") == 1
    finally:
        server.kill()


def test_one_shard_down_fails_only_its_channels(redis_servers):
    servers = redis_servers(2)
    on0 = next(f"c{i}" for i in range(100) if shard_index(f"c{i}", 2) == 0)
    on1 = next(f"c{i}" for i in range(100) if shard_index(f"c{i}", 2) == 1)

    async def body():
        handler = RecordingHandler()
        async with engine_on(servers, handler, uid="A", reconnect_max_delay=0.2, ping_interval=0.1) as e:
            await e.subscribe(on0)
            await e.subscribe(on1)
            servers[1].kill()
            await handler.wait_for(lambda: e.healthy() is not None)
            assert servers[1].address in e.healthy() and servers[0].address not in e.healthy()
            assert (await e.publish(on0, b"1", HISTORY))[0] == 1
            await e.publish_control("refresh", {"user": "u"})          # control goes over the live shard
            with pytest.raises(ApiError):
                await e.publish(on1, b"1", HISTORY)
            with pytest.raises(ApiError):
                await e.presence(on1)
            servers[1].start()
            await handler.wait_for(lambda: e.healthy() is None)
            await handler.wait_for(lambda: handler.gaps == [[on1]])     # only the shard that was lost
            assert (await e.publish(on1, b"2", HISTORY))[0] == 1        # data lost with the restart: new stream
            await handler.wait_for(lambda: len(handler.pubs_of(on1)) == 1)
    run(body())


def test_presence_restored_by_refresh_after_redis_lost_it(redis_server):
    async def body():
        handler = RecordingHandler()
        async with engine_on([redis_server], handler, presence_update_interval=0.2, reconnect_max_delay=0.2,
                             ping_interval=0.1) as e:
            info = b'{"user":"u","client":"c"}'
            await e.add_presence("p", "c", info)
            redis_server.kill()
            redis_server.start()
            await handler.wait_for(lambda: e.healthy() is None and
                                   redis_server.command("HKEYS", "centrifugo.presence.data.p") == [b"c"])
            assert await e.presence("p") == {"c": info}


def test_survey_outside_a_task_as_api_commands_run(redis_server):
    """The API runs a command eagerly, outside any task (uniws/eager.py): a survey there must
    neither raise (asyncio.timeout needs a task) nor lose its timeout."""
    async def body():
        ha, hb = RecordingHandler("A"), RecordingHandler("B", {"n": 2})
        async with engine_on([redis_server], ha, uid="A", survey_timeout=0.3, **FAST_CONTROL) as a, \
                engine_on([redis_server], hb, uid="B", **FAST_CONTROL):
            await ha.wait_for(lambda: len(a.nodes()) == 1)

            async def outside_a_task():
                loop = asyncio.get_running_loop()
                started = loop.create_future()
                loop.call_soon(lambda: started.set_result(run_eager(a.survey("channels", {}))))
                return await asyncio.wait_for(await started, 5)

            assert await outside_a_task() == [{"n": 2}]

            async def never(op, args):
                await asyncio.Event().wait()
            hb.handle_survey = never
            with pytest.raises(ApiError) as err:
                await outside_a_task()
            assert err.value.code == 100
    run(body())


def test_subscribe_outside_a_task_as_client_connects_run(redis_server):
    """A client's connect subscribes eagerly, outside any task: the broker subscription must
    still be made (it raised RuntimeError, and the channel's publications never came)."""
    async def body():
        ha = RecordingHandler("A")
        async with engine_on([redis_server], ha, uid="A", **FAST_CONTROL) as a, \
                engine_on([redis_server], uid="B", **FAST_CONTROL) as b:
            loop = asyncio.get_running_loop()
            started = loop.create_future()
            loop.call_soon(lambda: started.set_result(run_eager(a.subscribe("chat"))))
            waiting = await started
            if waiting is not None:
                await asyncio.wait_for(waiting, 5)
            await b.publish("chat", b'{"m":1}', ChannelOptions())
            await ha.wait_for(lambda: len(ha.pubs_of("chat")) == 1)
    run(body())
