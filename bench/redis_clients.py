"""Client-library comparison behind uniws/engine/redis_shards.py: EVALSHA calls/s (awaited
one by one, and 100 in flight) and PUB/SUB messages/s on one uvloop loop, for redis-py
(asyncio + hiredis), coredis and the engine's own pipelined hiredis connection.

    python -m bench.redis_clients [--count 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import uvloop

from tests.redisfixture import RedisServer
from uniws.engine.redis_shards import (
    CommandConnection,
    PubSubConnection,
    open_connection,
    parse_address,
)

SCRIPT = "redis.call('hincrby', KEYS[1], 's', 1); return redis.call('publish', KEYS[2], ARGV[1])"
PAYLOAD = b"x" * 50


async def timed_calls(call, count: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    for _ in range(count):
        await call()
    serial = count / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(count // 100):
        await asyncio.gather(*[call() for _ in range(100)])
    return serial, count // 100 * 100 / (time.perf_counter() - t0)


async def receive(next_message, publish_batch, count: int) -> float:
    feeder = asyncio.ensure_future(publish_batch())
    t0, n = time.perf_counter(), 0
    while n < count:
        if await next_message():
            n += 1
    rate = count / (time.perf_counter() - t0)
    await feeder
    return rate


async def redis_py(port: int, count: int) -> None:
    import redis.asyncio as aioredis
    r, pub = aioredis.Redis(port=port), aioredis.Redis(port=port)
    sha = await r.script_load(SCRIPT)
    serial, inflight = await timed_calls(lambda: r.evalsha(sha, 2, "m", "c", PAYLOAD), count)
    ps = r.pubsub()
    await ps.subscribe("c")
    await ps.get_message(timeout=1)

    async def feed():
        p = pub.pipeline(transaction=False)
        for _ in range(count):
            p.publish("c", PAYLOAD)
        await p.execute()

    async def next_message():
        return await ps.get_message(timeout=1)
    rate = await receive(next_message, feed, count)
    print(f"redis-py: {serial:8.0f}/s awaited, {inflight:8.0f}/s 100 in flight, PUB/SUB {rate:8.0f}/s")
    await ps.aclose()
    await r.aclose()
    await pub.aclose()


async def coredis_(port: int, count: int) -> None:
    import coredis
    async with coredis.Redis(port=port) as r:
        sha = await r.script_load(SCRIPT)
        serial, inflight = await timed_calls(lambda: r.evalsha(sha, ["m", "c"], [PAYLOAD]), count)
    print(f"coredis:  {serial:8.0f}/s awaited, {inflight:8.0f}/s 100 in flight")


async def own(port: int, count: int) -> None:
    address = parse_address(f"127.0.0.1:{port}")
    c = await open_connection(address, lambda: CommandConnection(lambda reason: None), 1)
    sha = await c.call(("SCRIPT", "LOAD", SCRIPT))
    serial, inflight = await timed_calls(lambda: c.call(("EVALSHA", sha, 2, "m", "c", PAYLOAD)), count)
    got: list[int] = [0]
    done = asyncio.Event()

    def on_message(channel, payload):
        got[0] += 1
        if got[0] == count:
            done.set()
    sub = await open_connection(address, lambda: PubSubConnection(lambda reason: None, on_message), 1)
    await sub.subscribe([b"c"])[0]
    t0 = time.perf_counter()
    for start in range(0, count, 1000):
        await asyncio.gather(*[c.call(("PUBLISH", "c", PAYLOAD)) for _ in range(min(1000, count - start))])
    await done.wait()
    rate = count / (time.perf_counter() - t0)
    print(f"own:      {serial:8.0f}/s awaited, {inflight:8.0f}/s 100 in flight, PUB/SUB {rate:8.0f}/s "
          f"(publisher on the same loop)")
    c.fail("done")
    sub.fail("done")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20_000)
    count = parser.parse_args().count
    server = RedisServer().start()
    try:
        for bench in (redis_py, coredis_, own):
            uvloop.run(bench(server.port, count))
    finally:
        server.kill()


if __name__ == "__main__":
    main()
