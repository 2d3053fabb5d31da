"""Bus transport comparison: uniws's shared-memory ring bus against a ZeroMQ ipc mesh.

    python -m bench.bus_bench [--runs 3]

Two worker processes, each on uvloop. Throughput: one sends 1 000 000 messages of
150 bytes in batches of 500 per loop turn, the other counts them (messages/s at
the receiver). Latency: 10 000 messages/s (100 per 10 ms tick) carrying their send
time, for 3 s; p50/p99 of send-to-handler time. Medians over --runs.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import struct
import tempfile
import time

import uvloop

from uniws.bus import Bus, BusFiles

MESSAGES, BATCH, SIZE = 1_000_000, 500, 150
RATE_TICK, RATE_PER_TICK, RATE_SECONDS = 0.01, 100, 3.0
_STAMP = struct.Struct("<d")


# -- the two transports behind one tiny interface ----------------------------------------

class _Handler:
    def __init__(self, on_message):
        self.on_message = on_message

    def on_bus_message(self, sender, message):
        self.on_message(message)

    def on_bus_gap(self, sender, lost=0):
        raise RuntimeError("bus lost messages")


class ZmqTransport:
    """The alternative: a ZeroMQ PUSH/PULL ipc mesh (bench/zmq_bus.py)."""

    def __init__(self, loop, index, setup, on_message):
        from bench.zmq_bus import Bus as ZmqBus
        self.bus = ZmqBus(loop, index, 2, setup, _Handler(on_message))

    def send(self, message):
        self.bus.send(1, message)

    def flush(self):
        self.bus.flush()


class ShmTransport:
    """uniws's bus: shared-memory rings with eventfd doorbells (uniws/bus.py)."""

    def __init__(self, loop, index, setup, on_message):
        self.bus = Bus(loop, index, setup, _Handler(on_message))

    def send(self, message):
        self.bus.send(1, message)

    def flush(self):
        self.bus.flush()


# -- the two processes ---------------------------------------------------------------------

def receiver(kind, setup, mode, results, ready, finished):
    async def main():
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        state = {"n": 0, "first": 0.0, "lat": []}

        def on_message(message):
            now = time.perf_counter()
            if state["n"] == 0:
                state["first"] = now
            state["n"] += 1
            if mode == "latency":
                state["lat"].append(now - _STAMP.unpack_from(message)[0])
                if message[8:9] == b"E":
                    done.set_result(None)
            elif state["n"] == MESSAGES:
                done.set_result(None)
        transport = TRANSPORTS[kind](loop, 1, setup, on_message)
        ready.set()
        await asyncio.wait_for(done, 120)
        if mode == "latency":
            lat = sorted(state["lat"])
            results.put((lat[len(lat) // 2], lat[int(len(lat) * 0.99)]))
        else:
            results.put(MESSAGES / (time.perf_counter() - state["first"]))
        finished.set()
    uvloop.run(main())


def sender(kind, setup, mode, ready, finished):
    async def main():
        loop = asyncio.get_running_loop()
        transport = TRANSPORTS[kind](loop, 0, setup, lambda m: None)
        ready.wait()
        await asyncio.sleep(0.3)                 # let ZeroMQ connect
        pad = b"x" * (SIZE - 9)
        if mode == "throughput":
            for _ in range(MESSAGES // BATCH):
                for _ in range(BATCH):
                    transport.send(_STAMP.pack(time.perf_counter()) + b"M" + pad)
                transport.flush()
                await asyncio.sleep(0)
        else:
            ticks = int(RATE_SECONDS / RATE_TICK)
            start = time.perf_counter()
            for tick in range(ticks):
                for i in range(RATE_PER_TICK):
                    last = tick == ticks - 1 and i == RATE_PER_TICK - 1
                    transport.send(_STAMP.pack(time.perf_counter()) + (b"E" if last else b"M") + pad)
                transport.flush()
                await asyncio.sleep(max(0.0, start + (tick + 1) * RATE_TICK - time.perf_counter()))
        while not finished.is_set():             # ZeroMQ drops what is still queued when we exit
            await asyncio.sleep(0.05)
    uvloop.run(main())


TRANSPORTS = {"zmq": ZmqTransport, "shm": ShmTransport}


def run_once(kind: str, mode: str):
    with tempfile.TemporaryDirectory(prefix="uniws-busbench-") as directory:
        setup = BusFiles.create(directory, 2, 256 << 20) if kind == "shm" else directory  # room for the whole burst
        ctx = mp.get_context("fork")
        results, ready, finished = ctx.Queue(), ctx.Event(), ctx.Event()
        procs = [ctx.Process(target=receiver, args=(kind, setup, mode, results, ready, finished)),
                 ctx.Process(target=sender, args=(kind, setup, mode, ready, finished))]
        for p in procs:
            p.start()
        result = results.get(timeout=180)
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
        if kind == "shm":
            for fd in setup.doorbells:
                os.close(fd)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for kind in ("zmq", "shm"):
        rates = [run_once(kind, "throughput") for _ in range(args.runs)]
        lats = [run_once(kind, "latency") for _ in range(args.runs)]
        p50 = statistics.median(l[0] for l in lats) * 1e6
        p99 = statistics.median(l[1] for l in lats) * 1e6
        print(f"{kind}: throughput {statistics.median(rates):,.0f} msg/s (runs: "
              f"{', '.join(f'{r:,.0f}' for r in rates)}); latency at 10 000 msg/s p50 {p50:.0f} us, p99 {p99:.0f} us")


if __name__ == "__main__":
    main()
