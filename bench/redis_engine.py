"""Redis engine micro-bench: publications/s through the engine on one uvloop loop (with and
without history), PUB/SUB messages/s received, and redis-server CPU per 100k publications.

    python -m bench.redis_engine [--count 100000] [--inflight 1000]

Starts its own redis-server on a free loopback port (killed by PID at the end). The
receive figure feeds the channel from `redis-benchmark` (a separate process, pipelined
PUBLISH) so the engine's loop only receives.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import time

import uvloop

from tests.redisfixture import RedisServer
from uniws.channels import ChannelOptions
from uniws.engine.redis import RedisEngine
from uniws.engine.redis_shards import parse_address

PAYLOAD = b'{"text":"' + b"x" * 40 + b'"}'


class CountingHandler:
    def __init__(self) -> None:
        self.received = 0
        self.done: asyncio.Event | None = None
        self.target = 0

    def handle_publication(self, channel, pub, epoch) -> None:
        self.received += 1
        if self.received == self.target and self.done is not None:
            self.done.set()

    def handle_join_leave(self, channel, join, info) -> None: ...
    def handle_gap(self, channels) -> None: ...
    def handle_control(self, op, args) -> None: ...
    async def handle_survey(self, op, args): return None
    def node_info(self) -> dict: return {"uid": "bench"}


def redis_cpu(server: RedisServer) -> float:
    info = server.command("INFO", "cpu").decode()
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    return float(fields["used_cpu_sys"]) + float(fields["used_cpu_user"])


async def publish_rate(engine: RedisEngine, server: RedisServer, opts: ChannelOptions, count: int,
                       inflight: int) -> tuple[float, float]:
    cpu0, t0 = redis_cpu(server), time.perf_counter()
    for start in range(0, count, inflight):
        futures = [engine.publish(f"bench{i % 16}", PAYLOAD, opts) for i in range(start, min(count, start + inflight))]
        await asyncio.gather(*futures)
    elapsed = time.perf_counter() - t0
    cpu = redis_cpu(server) - cpu0
    return count / elapsed, cpu * 100_000 / count


async def receive_rate(engine: RedisEngine, handler: CountingHandler, server: RedisServer, count: int) -> float:
    await engine.subscribe("recv")
    handler.received, handler.target, handler.done = 0, count, asyncio.Event()
    payload = b"\x22" + bytes([len(PAYLOAD)]) + PAYLOAD        # a serialized Publication (field 4)
    feeder = await asyncio.create_subprocess_exec(
        shutil.which("redis-benchmark"), "-p", str(server.port), "-n", str(count), "-c", "1", "-P", "200",
        "PUBLISH", "centrifugo.client.recv", payload, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.perf_counter()
    async with asyncio.timeout(120):
        await handler.done.wait()
    elapsed = time.perf_counter() - t0
    await feeder.wait()
    return count / elapsed


async def main(count: int, inflight: int) -> None:
    server = RedisServer().start()
    try:
        handler = CountingHandler()
        engine = RedisEngine(handler, [parse_address(server.address)], node_uid="bench", control=False)
        await engine.start()
        hist = ChannelOptions(history_size=100, history_ttl=300)
        rate, cpu = await publish_rate(engine, server, hist, count, inflight)
        print(f"publish with history:    {rate:10.0f}/s   redis CPU {cpu:5.2f} s per 100k")
        rate, cpu = await publish_rate(engine, server, ChannelOptions(), count, inflight)
        print(f"publish without history: {rate:10.0f}/s   redis CPU {cpu:5.2f} s per 100k")
        rate = await receive_rate(engine, handler, server, count)
        print(f"PUB/SUB received:        {rate:10.0f}/s")
        await engine.close()
    finally:
        server.kill()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--inflight", type=int, default=1000)
    args = parser.parse_args()
    uvloop.run(main(args.count, args.inflight))
