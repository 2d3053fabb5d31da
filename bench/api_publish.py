"""User-space CPU of the publish path, in one process, no sockets: `python -m bench.api_publish`.

A v3 API request of 1000 publish lines to 1000 distinct channels (no subscribers, so nothing is
written) goes through `Api.handle` of a real Node: with `--workers 1` its memory engine, with
`--workers 2` two Nodes on the same loop joined by a real shared-memory bus, the second one
reading every publication and answering the turn's barrier, as a second worker process would.
Prints the process CPU time per publication (both workers' work with 2), median and min over
`--runs` requests. It isolates what the channels scenario's server user time is made of,
without the kernel's socket work or the load generator; compare checkouts with PYTHONPATH.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time

import orjson

from uniws.api import Api
from uniws.bus import Bus, BusFiles
from uniws.config import load_config
from uniws.node import Node


def build(workers: int):
    cfg, _ = load_config(None, {}, {"api_insecure": True, "token_hmac_secret_key": "bench"})
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    if workers == 1:
        nodes = [Node(cfg, loop)]
    else:
        files = BusFiles.create(tempfile.mkdtemp(dir="/dev/shm"), workers, ring_bytes=1 << 24)
        nodes = [Node(cfg, loop, index=i, count=workers) for i in range(workers)]
        for i, node in enumerate(nodes):
            node.cluster.attach(Bus(loop, i, files, node.cluster))
    return loop, Api(nodes[0], api_key="", api_insecure=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2, choices=(1, 2))
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--lines", type=int, default=1000)
    args = p.parse_args()
    loop, api = build(args.workers)
    body = b"\n".join(orjson.dumps({"method": "publish", "params": {"channel": f"c{i}", "data": {
        "t": 1, "s": i, "pad": "x" * 60}}}) for i in range(args.lines))

    async def request():
        status, _, reply = await api.handle("POST", "/api", "", {}, body)
        assert status == 200 and reply.count(b'"result"') == args.lines, reply[:200]

    loop.run_until_complete(request())                      # warm up
    per_pub = []
    for _ in range(args.runs):
        t0 = time.process_time()
        loop.run_until_complete(request())
        per_pub.append((time.process_time() - t0) / args.lines * 1e6)
    print(f"publish path, {args.workers} worker(s), {args.lines} publications per request: "
          f"median {statistics.median(per_pub):.2f} us CPU per publication, min {min(per_pub):.2f}")


if __name__ == "__main__":
    main()
